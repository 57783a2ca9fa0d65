"""Route selection for HTTP requests by host and path (pure).

Kubernetes Ingress v1 semantics, with ingress-nginx behaviour where the API
leaves room. Selection runs per request over dicts built once by
`index_routes`; only the regex routes of the chosen host are scanned.

Host selection (like nginx `server_name`) picks ONE host group:

1. the rules naming the request's host exactly;
2. else the rules of the one-label wildcard: `*.foo.com` takes `bar.foo.com`,
   but neither `foo.com` nor `a.bar.foo.com`;
3. else the rules without a host ("any host").

Hosts compare case-insensitively; a port and a trailing dot are ignored (see
`host_of`). No Host header at all selects the "any host" group.

Path selection happens inside that group only. When nothing there takes the
path, the request goes to the default backend (`HttpRoutes.default`), and
when there is none `select_http` returns None (the caller answers 404): a
host group never falls back to a wildcard or the "any host" rules.

Path types, against the path as `normalize_path` left it:

- `Exact`: the whole path equals the rule's path, case-sensitively
  (`/foo` takes `/foo` only, not `/foo/`).
- `Prefix`: element-wise by "/", case-sensitively. Trailing slashes of the
  rule are ignored: `/foo` and `/foo/` both take `/foo`, `/foo/` and
  `/foo/bar`, but not `/foobar`; `/` takes every path (the catch-all of its
  host group).
- `Regex` (ingress-nginx `use-regex`): `route.pattern`, compiled by the caller
  as `re.compile("^" + path, re.IGNORECASE)`, matches at the start of the
  path (it is not anchored at the end).

Precedence, a total order; the first of these decides:

1. an `Exact` match beats everything (it is the most specific rule);
2. then, among `Prefix` and `Regex` matches, the greater *rank* wins: a regex
   rule's rank is the length of its path string, a prefix rule's the length
   of its path without trailing slashes (`/` counts 1), so `/foo` and
   `/foo/` rank the same. This is ingress-nginx's order (locations sorted by
   path length, longest first); for prefix rules it is also the longest
   match by elements, as the Ingress spec asks;
3. on equal rank, `Prefix` before `Regex`;
4. then config order.

Two rules of one host with the same type and path (for `Prefix`: the same
path without trailing slashes) are the same rule: the first in config order
is kept (the config layer has reported the conflict).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from meshgate.routing.table import HostIndex, HttpRoutes, HttpRouteSpec, PathSet

EXACT = "Exact"
PREFIX = "Prefix"
REGEX = "Regex"

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(r"//+")
_GROUP_REF = re.compile(r"\$([1-9$])")


@dataclass(frozen=True, slots=True)
class HttpMatch:
    """The route a request goes to, and the regex match for rewrite groups."""

    route: HttpRouteSpec
    match: re.Match[str] | None  # Regex routes: the match of route.pattern; None otherwise


def _prefix_key(path: str) -> str:
    """A prefix rule's dict key: its path without trailing slashes ("" for "/")."""
    return path.rstrip("/")


def _rank(route: HttpRouteSpec) -> int:
    """The length that orders Prefix and Regex rules (longer wins)."""
    if route.path_type == PREFIX:
        return len(_prefix_key(route.path)) or 1
    return len(route.path)


@dataclass(slots=True)
class _GroupBuilder:
    exact: dict[str, HttpRouteSpec]
    prefix: dict[str, HttpRouteSpec]
    regex: dict[str, HttpRouteSpec]

    def add(self, route: HttpRouteSpec) -> None:
        if route.path_type == EXACT:
            self.exact.setdefault(route.path, route)
        elif route.path_type == PREFIX:
            self.prefix.setdefault(_prefix_key(route.path), route)
        elif route.path_type == REGEX:
            if route.pattern is None:
                raise ValueError(f"{route.origin}: Regex path {route.path!r} has no pattern")
            self.regex.setdefault(route.path, route)
        else:
            raise ValueError(f"{route.origin}: unknown path type {route.path_type!r}")

    def build(self) -> PathSet:
        # Tried longest first; sorted() is stable, so config order breaks ties
        # (dicts keep insertion order).
        regex = sorted(self.regex.values(), key=lambda r: -len(r.path))
        return PathSet(exact=self.exact, prefix=self.prefix, regex=tuple(regex))


def index_routes(routes: Sequence[HttpRouteSpec]) -> HostIndex:
    """Index `routes` (in config order) by host, then by path, for `select_http`."""
    exact: dict[str, _GroupBuilder] = {}
    wildcard: dict[str, _GroupBuilder] = {}
    any_host: _GroupBuilder | None = None
    for route in routes:
        if route.host is None:
            if any_host is None:
                any_host = _GroupBuilder({}, {}, {})
            group = any_host
        else:
            host = route.host.lower().rstrip(".")
            if host.startswith("*."):
                group = wildcard.setdefault(host[2:], _GroupBuilder({}, {}, {}))
            else:
                group = exact.setdefault(host, _GroupBuilder({}, {}, {}))
        group.add(route)
    return HostIndex(
        exact={host: group.build() for host, group in exact.items()},
        wildcard={suffix: group.build() for suffix, group in wildcard.items()},
        any_host=any_host.build() if any_host is not None else None,
    )


def host_of(host_header: str | None) -> str | None:
    """The host name of a Host header: lower case, without port or trailing dot.

    `[::1]:8080` gives `::1`. None for a missing or empty host.
    """
    if not host_header:
        return None
    if host_header.startswith("["):
        end = host_header.find("]")
        name = host_header[1:end] if end > 0 else host_header[1:]
    elif host_header.count(":") > 1:
        name = host_header  # a bare IPv6 literal (not valid in Host, but unambiguous)
    else:
        name = host_header.partition(":")[0]
    return name.lower().rstrip(".") or None


def _host_group(index: HostIndex, host: str | None) -> PathSet | None:
    if host:
        group = index.exact.get(host)
        if group is not None:
            return group
        label, dot, parent = host.partition(".")
        if label and dot:  # "*" stands for one whole, non-empty label
            group = index.wildcard.get(parent)
            if group is not None:
                return group
    return index.any_host


def _select_path(group: PathSet, path: str) -> HttpMatch | None:
    route = group.exact.get(path)
    if route is not None:
        return HttpMatch(route, None)
    # The longest prefix rule by elements: the path's element prefixes, longest
    # first. A rule key never ends in "/", so a trailing slash is skipped.
    best: HttpRouteSpec | None = None
    key = path.rstrip("/")
    prefix = group.prefix
    while True:
        best = prefix.get(key)
        if best is not None or not key:
            break
        cut = key.rfind("/")
        key = key[:cut] if cut > 0 else ""
    # A regex rule wins only with a greater rank (Prefix first on equal rank);
    # the regex rules are stored longest first, so stop at the first too short.
    floor = _rank(best) if best is not None else -1
    for route in group.regex:
        if len(route.path) <= floor:
            break
        pattern = route.pattern  # never None: index_routes checked
        match = pattern.match(path) if pattern is not None else None
        if match is not None:
            return HttpMatch(route, match)
    return HttpMatch(best, None) if best is not None else None


def select_http(routes: HttpRoutes, host: str | None, path: str) -> HttpMatch | None:
    """The route for a request, or None when nothing (not even a default) takes it.

    `host` is the Host header as sent (any case, maybe a port or a trailing
    dot), `path` the request path without query, after `normalize_path`.
    """
    group = _host_group(routes.index, host_of(host))
    if group is not None:
        found = _select_path(group, path)
        if found is not None:
            return found
    return HttpMatch(routes.default, None) if routes.default is not None else None


def _percent(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path without empty segments."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if not out:
        return "/"
    trailing = "/" if segments[-1] in (".", "..") else ""
    return "/" + "/".join(out) + trailing


def normalize_path(raw_path: str) -> str:
    """The request path as matched against rules (the request is forwarded as sent).

    Percent-encoded unreserved characters (ALPHA DIGIT - . _ ~) are decoded
    and the hex of every other escape is upper-cased (RFC 3986 §6.2.2);
    `%2F` and the other reserved characters stay encoded. Repeated slashes
    are merged (nginx `merge_slashes`) and then dot segments removed
    (RFC 3986 §5.2.4), so `/%61dmin` and `/a/../admin` are `/admin`. A
    path not starting with "/" gets one; the result is never empty.
    """
    path = raw_path if raw_path.startswith("/") else "/" + raw_path
    if "%" in path:
        path = _PERCENT.sub(_percent, path)
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "/." in path:
        path = _remove_dot_segments(path)
    return path


def rewrite_path(match: HttpMatch, path: str) -> str:
    """The path sent to the backend: ingress-nginx `rewrite-target` semantics.

    Without a rewrite target, `path` unchanged. With one, the whole path is
    replaced by the target (as nginx `rewrite` does), with `$1`..`$9` replaced
    by the groups of `route.pattern` matched against `path`, or, if it does
    not match there, of the match the route was selected by; a group that is
    missing or took no part gives "". `$$` is a literal `$`; any other `$`
    is kept as is. A plain target (no `$`) is the new path whatever the
    request path was. The result always starts with "/".
    """
    route = match.route
    target = route.rewrite_target
    if target is None:
        return path
    if "$" in target:
        found = route.pattern.match(path) if route.pattern is not None else None
        if found is None:
            found = match.match
        groups: tuple[str | None, ...] = found.groups() if found is not None else ()

        def expand(ref: re.Match[str]) -> str:
            name = ref.group(1)
            if name == "$":
                return "$"
            number = int(name)
            return (groups[number - 1] or "") if number <= len(groups) else ""

        target = _GROUP_REF.sub(expand, target)
    return target if target.startswith("/") else "/" + target
