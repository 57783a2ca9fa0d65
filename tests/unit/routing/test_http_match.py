"""http_match: Ingress host and path selection, checked against a plain model."""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshgate.routing.http_match import (
    HttpMatch,
    host_of,
    index_routes,
    normalize_path,
    rewrite_path,
    select_http,
)
from meshgate.routing.table import HttpLimits, HttpRoutes, HttpRouteSpec, PoolSpec, Timeouts

LIMITS = HttpLimits(
    max_request_line=8192,
    max_header_bytes=65536,
    max_headers=100,
    max_body=None,
    header_timeout=10.0,
    keepalive_timeout=60.0,
    trusted_proxies=(),
    https_port=443,
    access_log=False,
)


def _route(
    path: str,
    path_type: str = "Prefix",
    host: str | None = None,
    *,
    name: str = "b",
    rewrite_target: str | None = None,
) -> HttpRouteSpec:
    pool = PoolSpec(
        name=name, endpoints=(), balance="round_robin", timeouts=Timeouts(1.0, 60.0, 1.0)
    )
    return HttpRouteSpec(
        host=host,
        path=path,
        path_type=path_type,
        pool=pool,
        rewrite_target=rewrite_target,
        ssl_redirect=False,
        app_root=None,
        allow=(),
        max_body=None,
        connect_timeout=None,
        read_timeout=60.0,
        origin=f"test {host} {path_type} {path}",
        pattern=re.compile("^" + path, re.IGNORECASE) if path_type == "Regex" else None,
    )


def _routes(*routes: HttpRouteSpec, default: HttpRouteSpec | None = None) -> HttpRoutes:
    return HttpRoutes(routes=routes, default=default, index=index_routes(routes), limits=LIMITS)


def _name(routes: HttpRoutes, host: str | None, path: str) -> str | None:
    found = select_http(routes, host, path)
    if found is None:
        return None
    assert found.route.pool is not None
    return found.route.pool.name


# --- the reference model: every route scanned, straight from the definitions --


def _wildcard_takes(wildcard: str, host: str) -> bool:
    """`*.foo.com` takes a host of exactly one more label ending in `.foo.com`."""
    pattern_labels = wildcard.split(".")
    host_labels = host.split(".")
    return (
        len(host_labels) == len(pattern_labels)
        and host_labels[0] != ""
        and host_labels[1:] == pattern_labels[1:]
    )


def _path_takes(route: HttpRouteSpec, path: str) -> bool:
    if route.path_type == "Exact":
        return path == route.path
    if route.path_type == "Prefix":
        rule = route.path.split("/")[1:]
        while rule and rule[-1] == "":  # the rule's trailing slash is ignored
            rule.pop()
        request = path.split("/")[1:]
        return request[: len(rule)] == rule
    assert route.path_type == "Regex"
    return re.match("^" + route.path, path, re.IGNORECASE) is not None


def _rank(route: HttpRouteSpec) -> int:
    if route.path_type == "Prefix":
        return len(route.path.rstrip("/")) or 1
    return len(route.path)


def model(
    routes: Sequence[HttpRouteSpec],
    default: HttpRouteSpec | None,
    host: str | None,
    path: str,
) -> HttpRouteSpec | None:
    """The route for (`host`, `path`): `host` already lower case, no port or dot."""
    named = {r.host for r in routes if r.host is not None and not r.host.startswith("*.")}
    if host is not None and host in named:
        group = [r for r in routes if r.host == host]
    elif host is not None and any(
        r.host is not None and r.host.startswith("*.") and _wildcard_takes(r.host, host)
        for r in routes
    ):
        group = [
            r
            for r in routes
            if r.host is not None and r.host.startswith("*.") and _wildcard_takes(r.host, host)
        ]
    else:
        group = [r for r in routes if r.host is None]
    candidates = [(i, r) for i, r in enumerate(group) if _path_takes(r, path)]
    if not candidates:
        return default
    _, best = min(
        candidates,
        key=lambda c: (
            c[1].path_type != "Exact",
            -_rank(c[1]),
            c[1].path_type != "Prefix",
            c[0],
        ),
    )
    return best


# --- strategies ----------------------------------------------------------------

ROUTE_HOSTS = (None, "a.com", "b.a.com", "*.a.com", "x.b.a.com", "*.b.a.com")
REQUEST_HOSTS = (
    None,
    "a.com",
    "b.a.com",
    "x.b.a.com",
    "y.b.a.com",
    "y.a.com",
    "a.b.a.com",
    "x.y.b.a.com",
    "com",
    "other.org",
    "10.0.0.1",
    "::1",
)
SEGMENTS = st.sampled_from(("foo", "bar", "FOO", "baz"))
REQUEST_SEGMENTS = st.one_of(SEGMENTS, st.sampled_from(("foobar", "fo", "foo.bar", "x")))
REGEX_PATHS = (
    "/",
    "/foo(/|$)(.*)",
    "/foo",
    "/fo+",
    "/.*",
    "/bar/?",
    "/FOO/ba",
    "/(foo|bar)/",
    "/foo/bar$",
    "/[a-z]+/foo",
)


@st.composite
def plain_paths(draw: st.DrawFn, segments: st.SearchStrategy[str] = SEGMENTS) -> str:
    """Paths like /, /foo, /foo/ and /FOO/bar: no "//" and no dot segments."""
    parts = draw(st.lists(segments, max_size=3))
    trailing_slash = draw(st.booleans())
    return "/" + "/".join(parts) + ("/" if parts and trailing_slash else "")


@st.composite
def routes_st(draw: st.DrawFn, hosts: Sequence[str | None] = ROUTE_HOSTS) -> HttpRouteSpec:
    path_type = draw(st.sampled_from(("Exact", "Prefix", "Regex")))
    if path_type == "Regex":
        path = draw(st.one_of(st.sampled_from(REGEX_PATHS), plain_paths()))
    else:
        path = draw(plain_paths())
    host = draw(st.sampled_from(hosts))
    return _route(path, path_type, host, name=draw(st.sampled_from("pqrst")))


@st.composite
def headers(draw: st.DrawFn, host: str | None) -> str | None:
    """`host` as a client may send it: any case, maybe a trailing dot and a port."""
    if host is None:
        return draw(st.sampled_from((None, "")))
    header = "".join(c.upper() if draw(st.booleans()) else c for c in host)
    if ":" in host:
        header = f"[{header}]"
    elif draw(st.booleans()):
        header += "."
    if draw(st.booleans()):
        header += f":{draw(st.integers(1, 65535))}"
    return header


@dataclasses.dataclass(frozen=True)
class Scenario:
    routes: list[HttpRouteSpec]
    host: str | None  # canonical, for the model
    header: str | None  # as sent, for select_http
    path: str  # normalised


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Routes on a few hosts, and a request that often hits them.

    The routes share one to three hosts so that host groups hold several
    rules; the request's host and path are often taken from those rules.
    """
    palette = draw(st.lists(st.sampled_from(ROUTE_HOSTS), min_size=1, max_size=3, unique=True))
    routes = draw(st.lists(routes_st(palette), max_size=10))
    named = st.sampled_from(palette).flatmap(
        lambda h: (
            st.sampled_from(("y", "b", "x")).map(lambda label: label + h[1:])
            if h is not None and h.startswith("*")
            else st.just(h)
        )
    )
    host = draw(st.one_of(named, st.sampled_from(REQUEST_HOSTS)))
    plain = [r.path for r in routes if r.path_type != "Regex"]
    paths = plain_paths(REQUEST_SEGMENTS)
    if plain:
        extended = st.tuples(
            st.sampled_from(plain), st.sampled_from(("", "x", "/", "/x", "/foo", "/FOO/"))
        ).map(lambda t: normalize_path(t[0] + t[1]))
        paths = st.one_of(paths, extended)
    return Scenario(routes, host, draw(headers(host)), draw(paths))


ROUTE_LISTS = st.lists(routes_st(), max_size=10)
DEFAULTS = st.one_of(st.none(), st.just(_route("/", name="default")))


# --- the compiled lookup agrees with the model -----------------------------------


@settings(max_examples=500)
@given(scenarios(), DEFAULTS)
def test_select_http_agrees_with_the_model(case: Scenario, default: HttpRouteSpec | None) -> None:
    expected = model(case.routes, default, case.host, case.path)
    found = select_http(_routes(*case.routes, default=default), case.header, case.path)
    assert (found.route if found is not None else None) is expected


@given(scenarios())
def test_regex_matches_carry_the_match_and_others_none(case: Scenario) -> None:
    found = select_http(_routes(*case.routes), case.header, case.path)
    if found is None:
        return
    if found.route.path_type == "Regex":
        assert found.match is not None
        assert found.match.re is found.route.pattern
        assert found.match.string == case.path
    else:
        assert found.match is None


@given(scenarios())
def test_prefix_slash_rules_catch_whatever_their_host_group_gets(case: Scenario) -> None:
    """With a Prefix "/" rule in every host group, the default is never used."""
    default = _route("/", name="default")
    routes = [*case.routes, *(_route("/", host=h, name="catchall") for h in ROUTE_HOSTS)]
    found = select_http(_routes(*routes, default=default), case.header, case.path)
    assert found is not None
    assert found.route is not default
    assert found.route is model(routes, default, case.host, case.path)


# --- path matching: the Kubernetes docs' "Examples" table -------------------------


@pytest.mark.parametrize(
    ("rules", "path", "matches"),
    [
        ([("Prefix", "/")], "/", True),
        ([("Prefix", "/")], "/anything/at/all", True),
        ([("Exact", "/foo")], "/foo", True),
        ([("Exact", "/foo")], "/bar", False),
        ([("Exact", "/foo")], "/foo/", False),
        ([("Exact", "/foo/")], "/foo", False),
        ([("Prefix", "/foo")], "/foo", True),
        ([("Prefix", "/foo")], "/foo/", True),
        ([("Prefix", "/foo/")], "/foo", True),
        ([("Prefix", "/foo/")], "/foo/", True),
        ([("Prefix", "/aaa/bb")], "/aaa/bbb", False),
        ([("Prefix", "/aaa/bbb")], "/aaa/bbb", True),
        ([("Prefix", "/aaa/bbb/")], "/aaa/bbb", True),
        ([("Prefix", "/aaa/bbb")], "/aaa/bbb/", True),
        ([("Prefix", "/aaa/bbb")], "/aaa/bbb/ccc", True),
        ([("Prefix", "/aaa/bbb")], "/aaa/bbbxyz", False),
        ([("Prefix", "/aaa")], "/ccc", False),
    ],
)
def test_kubernetes_path_examples(rules: list[tuple[str, str]], path: str, matches: bool) -> None:
    routes = _routes(*(_route(p, t, name="rule") for t, p in rules))
    assert (_name(routes, None, path) == "rule") is matches


@pytest.mark.parametrize(
    ("path", "winner"),
    [("/aaa/ccc", "/aaa"), ("/aaa/bbb", "/aaa/bbb"), ("/ccc", "/"), ("/aaa/bbbx", "/aaa")],
)
def test_kubernetes_longest_prefix_wins(path: str, winner: str) -> None:
    routes = _routes(*(_route(p, name=p) for p in ("/", "/aaa", "/aaa/bbb")))
    assert _name(routes, None, path) == winner


def test_kubernetes_exact_beats_prefix_for_the_same_path() -> None:
    for order in (("Prefix", "Exact"), ("Exact", "Prefix")):
        routes = _routes(*(_route("/foo", t, name=t) for t in order))
        assert _name(routes, None, "/foo") == "Exact"
        assert _name(routes, None, "/foo/") == "Prefix"


def test_longer_prefixes_win_by_elements() -> None:
    routes = _routes(_route("/foo", name="foo"), _route("/foo/bar", name="foobar"))
    assert _name(routes, None, "/foo/bar/baz") == "foobar"
    assert _name(routes, None, "/foo/barbaz") == "foo"
    assert _name(routes, None, "/foo") == "foo"


def test_exact_matching_is_case_sensitive_and_prefix_too() -> None:
    routes = _routes(_route("/foo", "Exact", name="exact"), _route("/bar", name="prefix"))
    assert _name(routes, None, "/FOO") is None
    assert _name(routes, None, "/Bar/x") is None


# --- regex rules and the precedence order -------------------------------------------


def test_regex_is_anchored_at_the_start_only_and_ignores_case() -> None:
    routes = _routes(_route("/api/v[0-9]+", "Regex", name="api"))
    assert _name(routes, None, "/API/V2/users") == "api"
    assert _name(routes, None, "/api/v2") == "api"
    assert _name(routes, None, "/x/api/v2") is None


def test_exact_beats_a_longer_regex() -> None:
    routes = _routes(_route("/foo.*bar/baz", "Regex", name="regex"), _route("/foo", "Exact"))
    assert _name(routes, None, "/foo") == "b"


def test_a_longer_regex_beats_a_shorter_prefix_and_loses_to_a_longer_one() -> None:
    routes = _routes(
        _route("/api", name="prefix"),
        _route("/api/v[0-9]", "Regex", name="regex"),
        _route("/api/v1/admin", name="admin"),
    )
    assert _name(routes, None, "/api/v1/users") == "regex"
    assert _name(routes, None, "/api/x") == "prefix"
    assert _name(routes, None, "/api/v1/admin/x") == "admin"


def test_on_equal_length_prefix_beats_regex_and_the_trailing_slash_does_not_count() -> None:
    for regex in ("/foo", "/fo."):
        routes = _routes(_route(regex, "Regex", name="regex"), _route("/foo/", name="prefix"))
        assert _name(routes, None, "/foo/x") == "prefix"
    routes = _routes(_route("/", name="prefix"), _route("/", "Regex", name="regex"))
    assert _name(routes, None, "/x") == "prefix"
    routes = _routes(_route("/", name="prefix"), _route("/.", "Regex", name="regex"))
    assert _name(routes, None, "/x") == "regex"
    assert _name(routes, None, "/") == "prefix"


def test_longer_regex_rules_are_tried_first_whatever_the_config_order() -> None:
    routes = _routes(
        _route("/fo+", "Regex", name="short"),
        _route("/foo(/|$)(.*)", "Regex", name="long"),
        _route("/foo", name="prefix"),
    )
    assert _name(routes, None, "/foo/bar") == "long"
    assert _name(routes, None, "/fooo") == "short"


def test_a_prefix_rule_ranks_by_its_path_without_the_trailing_slash() -> None:
    routes = _routes(_route("/foo/", name="prefix"), _route("/foo/", "Regex", name="regex"))
    assert _name(routes, None, "/foo/x") == "regex"
    assert _name(routes, None, "/foo") == "prefix"


def test_regex_rules_of_equal_length_go_in_config_order() -> None:
    routes = _routes(_route("/a.", "Regex", name="first"), _route("/.b", "Regex", name="second"))
    assert _name(routes, None, "/ab") == "first"
    assert _name(routes, None, "/xb") == "second"


def test_the_first_of_two_identical_rules_wins() -> None:
    for path_type in ("Exact", "Prefix", "Regex"):
        routes = _routes(
            _route("/foo", path_type, name="first"), _route("/foo", path_type, name="second")
        )
        assert _name(routes, None, "/foo") == "first"
    routes = _routes(_route("/foo", name="first"), _route("/foo/", name="second"))
    assert _name(routes, None, "/foo/x") == "first"
    routes = _routes(_route("/foo/", name="first"), _route("/foo", name="second"))
    assert _name(routes, None, "/foo") == "first"


def test_index_rejects_a_regex_rule_without_a_pattern_and_unknown_types() -> None:
    unpatterned = dataclasses.replace(_route("/x", "Regex"), pattern=None)
    with pytest.raises(ValueError, match="no pattern"):
        index_routes([unpatterned])
    with pytest.raises(ValueError, match="unknown path type"):
        index_routes([_route("/x", "ImplementationSpecific")])


# --- hosts ---------------------------------------------------------------------------

HOSTS = _routes(
    _route("/", host="foo.bar.com", name="exact"),
    _route("/", host="*.foo.com", name="wild"),
    _route("/", name="any"),
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("foo.bar.com", "exact"),
        ("FOO.Bar.COM", "exact"),
        ("foo.bar.com:8080", "exact"),
        ("foo.bar.com.", "exact"),
        ("Foo.Bar.Com.:80", "exact"),
        ("bar.foo.com", "wild"),
        ("BAR.foo.com:443", "wild"),
        ("baz.bar.foo.com", "any"),
        ("foo.com", "any"),
        ("xfoo.com", "any"),
        (".foo.com", "any"),
        ("other.org", "any"),
        ("[::1]:8080", "any"),
        ("10.0.0.1", "any"),
        (None, "any"),
        ("", "any"),
    ],
)
def test_host_selection(host: str | None, expected: str) -> None:
    assert _name(HOSTS, host, "/x") == expected


def test_a_host_group_does_not_fall_back_to_wildcard_or_any_host_rules() -> None:
    routes = _routes(
        _route("/api", "Exact", host="www.foo.com", name="exact"),
        _route("/", host="*.foo.com", name="wild"),
        _route("/", name="any"),
        default=_route("/", name="default"),
    )
    assert _name(routes, "www.foo.com", "/api") == "exact"
    assert _name(routes, "www.foo.com", "/other") == "default"
    routes = _routes(_route("/api", host="*.foo.com", name="wild"), _route("/", name="any"))
    assert _name(routes, "x.foo.com", "/other") is None
    assert _name(routes, "foo.com", "/other") == "any"


def test_the_default_takes_what_no_rule_does_and_none_without_one() -> None:
    default = _route("/", name="default")
    with_default = _routes(_route("/foo", host="foo.com", name="foo"), default=default)
    found = select_http(with_default, "bar.com", "/foo")
    assert found == HttpMatch(default, None)
    assert _name(with_default, "foo.com", "/bar") == "default"
    assert _name(with_default, "foo.com", "/foo/x") == "foo"
    without = _routes(_route("/foo", host="foo.com", name="foo"))
    assert select_http(without, "bar.com", "/foo") is None
    assert select_http(without, "foo.com", "/bar") is None
    assert select_http(_routes(), None, "/") is None
    assert _name(_routes(default=default), None, "/") == "default"


@pytest.mark.parametrize(
    ("header", "host"),
    [
        (None, None),
        ("", None),
        ("foo.com", "foo.com"),
        ("FOO.com:8080", "foo.com"),
        ("foo.com.", "foo.com"),
        ("foo.com.:80", "foo.com"),
        ("foo.com:", "foo.com"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("[FD00::A]:443", "fd00::a"),
        ("::1", "::1"),
        ("10.0.0.1:80", "10.0.0.1"),
        (".", None),
        (":80", None),
    ],
)
def test_host_of(header: str | None, host: str | None) -> None:
    assert host_of(header) == host


# --- normalize_path --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/%61dmin", "/admin"),
        ("/%41DMIN", "/ADMIN"),
        ("/a/../admin", "/admin"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/../", "/a/"),
        ("/%2e%2e/admin", "/admin"),
        ("/.%2E/admin", "/admin"),
        ("//admin", "/admin"),
        ("/a///b//", "/a/b/"),
        ("/a//../b", "/b"),  # slashes merged first, as nginx does
        ("/a%2Fb", "/a%2Fb"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2f..%2fb", "/a%2F..%2Fb"),
        ("/%7euser/%5F", "/~user/_"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/100%", "/100%"),
        ("/%zz/%4", "/%zz/%4"),
        ("/%2541", "/%2541"),
        ("/..", "/"),
        ("/../..", "/"),
        ("/.", "/"),
        ("/", "/"),
        ("", "/"),
        ("admin", "/admin"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a/..b/c.", "/a/..b/c."),
    ],
)
def test_normalize_path(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


UNRESERVED = set(string.ascii_letters + string.digits + "-._~")
RAW_PATHS = st.lists(
    st.sampled_from(("a", "b", "", ".", "..", "%2e", "%2E%2e", "%61", "%2F", "%2f", "%7E", "c%3a")),
    max_size=6,
).map(lambda parts: "/" + "/".join(parts))


@given(st.one_of(RAW_PATHS, st.text(max_size=20)))
@example("/a/b/../../..//c/.")
def test_normalize_path_is_idempotent_and_canonical(raw: str) -> None:
    normal = normalize_path(raw)
    assert normal.startswith("/")
    assert normalize_path(normal) == normal
    assert "//" not in normal
    assert all(segment not in (".", "..") for segment in normal.split("/"))
    escapes = re.findall(r"%[0-9A-Fa-f]{2}", normal)
    assert all(e == e.upper() for e in escapes)
    assert not any(chr(int(e[1:], 16)) in UNRESERVED for e in escapes)


@given(plain_paths(REQUEST_SEGMENTS), st.data())
def test_encoding_unreserved_characters_does_not_change_the_route(
    path: str, data: st.DataObject
) -> None:
    encoded = "".join(
        f"%{ord(c):02{data.draw(st.sampled_from('xX'))}}"
        if c != "/" and data.draw(st.booleans())
        else c
        for c in path
    )
    assert normalize_path(encoded) == path
    routes = _routes(_route("/foo", "Exact", name="exact"), _route("/bar", name="prefix"))
    assert _name(routes, None, normalize_path(encoded)) == _name(routes, None, path)


# --- rewrite_path ------------------------------------------------------------------------


def _rewrite(route: HttpRouteSpec, path: str) -> str:
    found = select_http(_routes(route), None, path)
    assert found is not None
    return rewrite_path(found, path)


@pytest.mark.parametrize(
    ("path", "rewritten"),
    [
        ("/something", "/"),
        ("/something/", "/"),
        ("/something/new", "/new"),
        ("/something/new/deeper", "/new/deeper"),
        ("/SomeThing/new", "/new"),
    ],
)
def test_rewrite_target_with_capture_groups(path: str, rewritten: str) -> None:
    """The ingress-nginx rewrite example: path /something(/|$)(.*), target /$2."""
    route = _route("/something(/|$)(.*)", "Regex", rewrite_target="/$2")
    assert _rewrite(route, path) == rewritten


def test_a_plain_rewrite_target_replaces_the_whole_path() -> None:
    assert _rewrite(_route("/app", "Regex", rewrite_target="/"), "/app/x/y") == "/"
    assert _rewrite(_route("/", rewrite_target="/app1"), "/some/where") == "/app1"
    assert _rewrite(_route("/old", "Exact", rewrite_target="/new/"), "/old") == "/new/"


def test_without_a_rewrite_target_the_path_is_unchanged() -> None:
    assert _rewrite(_route("/foo(.*)", "Regex"), "/foo/bar") == "/foo/bar"
    assert _rewrite(_route("/foo"), "/foo/bar") == "/foo/bar"


def test_rewrite_group_references() -> None:
    route = _route("/(a)(b)?(c)?", "Regex", rewrite_target="/$1-$2-$3-$9-$$1-$x-$")
    assert _rewrite(route, "/ac") == "/a--c--$1-$x-$"
    # $1 without a group (a Prefix rule has no pattern) is empty.
    assert _rewrite(_route("/foo", rewrite_target="/x/$1"), "/foo/bar") == "/x/"


def test_a_rewrite_always_starts_with_a_slash() -> None:
    route = _route("/api/(.*)", "Regex", rewrite_target="$1")
    assert _rewrite(route, "/api/users") == "/users"
    assert _rewrite(route, "/api/") == "/"


def test_rewrite_uses_the_selection_match_when_the_path_given_differs() -> None:
    route = _route("/api/(.*)", "Regex", rewrite_target="/$1")
    found = select_http(_routes(route), None, "/api/x")
    assert found is not None
    assert rewrite_path(found, "/api/y") == "/y"
    assert rewrite_path(found, "//api/y") == "/x"


@given(ROUTE_LISTS, plain_paths(REQUEST_SEGMENTS), st.sampled_from(("/$2", "$1", "", "/a/$3")))
def test_rewrites_start_with_a_slash(routes: list[HttpRouteSpec], path: str, target: str) -> None:
    found = select_http(_routes(*routes), None, path)
    if found is None:
        return
    route = dataclasses.replace(found.route, rewrite_target=target)
    assert rewrite_path(HttpMatch(route, found.match), path).startswith("/")
