"""The Ingress annotations meshgate understands, in one table.

Each annotation is `meshgate.io/<name>`; the ingress-nginx spelling
`nginx.ingress.kubernetes.io/<name>` is accepted as an alias, so Ingresses
written for ingress-nginx work unchanged. Values are strings, as Kubernetes
requires, and are parsed the way ingress-nginx reads them:

- booleans are "true" or "false";
- durations are seconds ("60", as ingress-nginx takes them) or carry a unit
  ("5s", "250ms", "2m");
- sizes are nginx sizes ("8k", "1m", "1g", plain bytes), "0" meaning no limit;
- address lists are comma-separated addresses or CIDR ranges.

What is reported, and how strongly:

- an invalid value, or an unknown `meshgate.io/...` key (most likely a typo),
  is a problem: the caller skips the whole Ingress rather than serve it with
  a setting silently missing (an access list, a redirect);
- an `nginx.ingress.kubernetes.io/...` key meshgate does not implement is a
  note ("ignored, not supported"): such Ingresses still work, minus that;
- other prefixes (kubectl's, cert-manager's, ...) are not ours and are ignored.

`ANNOTATIONS` is the table itself; `markdown_table` renders it for the README.
Pure: no I/O.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from meshgate.config.model import check_exact_name, check_path, check_visible, parse_duration

PREFIX = "meshgate.io/"
NGINX_PREFIX = "nginx.ingress.kubernetes.io/"

BackendProtocol = Literal["HTTP", "HTTPS"]

# ingress-nginx backend protocols meshgate does not speak (yet).
_UNSUPPORTED_PROTOCOLS = frozenset({"GRPC", "GRPCS", "AUTO_HTTP", "FCGI", "H2C"})


@dataclass(frozen=True, slots=True)
class IngressAnnotations:
    """The settings one Ingress's annotations ask for (defaults: none given)."""

    rewrite_target: str | None = None
    use_regex: bool = False
    ssl_redirect: bool | None = None  # None: on when a tls entry covers the host
    force_ssl_redirect: bool = False
    backend_protocol: BackendProtocol = "HTTP"
    ssl_passthrough: bool = False
    connect_timeout: float | None = None
    read_timeout: float | None = None
    max_body: int | None = None  # bytes; None: no limit
    allow: tuple[str, ...] = ()  # normalised CIDR ranges; empty: everyone
    app_root: str | None = None
    proxy_ssl_name: str | None = None
    # ingress-nginx's default is "off"; meshgate verifies unless told not to.
    proxy_ssl_verify: bool = True
    proxy_ssl_secret: tuple[str, str] | None = None  # (namespace, name)


def _bool(value: str) -> bool:
    text = value.strip().lower()
    if text == "true":
        return True
    if text == "false":
        return False
    raise ValueError(f'expected "true" or "false", got {value!r}')


def _on_off(value: str) -> bool:
    text = value.strip().lower()
    if text == "on":
        return True
    if text == "off":
        return False
    raise ValueError(f'expected "on" or "off", got {value!r}')


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(
            f'expected seconds ("60") or a duration like "5s", "250ms", "2m", got {value!r}'
        ) from None


_SIZE = re.compile(r"^\s*(\d{1,15})\s*([kmg]?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(value: str) -> int | None:
    """An nginx size ("8k", "1m", "1g", "512") in bytes; "0" is no limit (None)."""
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f'expected a size like "8k", "1m", "1g" or "0" (no limit), got {value!r}')
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    return size or None


def parse_cidrs(value: str) -> tuple[str, ...]:
    """ "10.0.0.0/8, 192.168.0.1" -> ("10.0.0.0/8", "192.168.0.1/32")."""
    ranges: list[str] = []
    for item in value.split(","):
        text = item.strip()
        if not text:
            continue
        try:
            ranges.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ValueError(f"not an address or CIDR range: {text!r}") from None
    if not ranges:
        raise ValueError("lists no address ranges (remove the annotation to allow everyone)")
    return tuple(dict.fromkeys(ranges))


def _backend_protocol(value: str) -> BackendProtocol:
    text = value.strip().upper()
    if text == "HTTP":
        return "HTTP"
    if text == "HTTPS":
        return "HTTPS"
    if text in _UNSUPPORTED_PROTOCOLS:
        raise ValueError(f"{text} is not supported: meshgate speaks HTTP and HTTPS to backends")
    raise ValueError(f'expected "HTTP" or "HTTPS", got {value!r}')


def _rewrite(value: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError("is empty; give the path to rewrite to, e.g. /$2")
    return check_visible(text)


def _app_root(value: str) -> str:
    return check_path(value.strip())


def _server_name(value: str) -> str:
    return check_exact_name(value)


_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _secret_ref(value: str) -> tuple[str, str]:
    namespace, sep, name = value.strip().partition("/")
    if not sep or not _LABEL.match(namespace) or not _SUBDOMAIN.match(name):
        raise ValueError(f'expected "namespace/name" of a Secret, got {value!r}')
    return namespace, name


@dataclass(frozen=True, slots=True)
class Annotation:
    """One supported annotation: its names, how its value reads, what it does."""

    name: str  # "rewrite-target": meshgate.io/rewrite-target, nginx...io/rewrite-target
    field: str  # the IngressAnnotations attribute it sets
    value: str  # the accepted values, for the documentation table
    description: str
    parse: Callable[[str], object]
    aliases: tuple[str, ...] = ()  # other names, under both prefixes
    https_backend_only: bool = False  # meaningful with backend-protocol HTTPS only

    @property
    def key(self) -> str:
        return PREFIX + self.name

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key that sets it, the preferred one first."""
        names = (self.name, *self.aliases)
        return tuple(PREFIX + n for n in names) + tuple(NGINX_PREFIX + n for n in names)


ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation(
        "rewrite-target",
        "rewrite_target",
        "path, may use `$1`..`$9`",
        "Rewrite the request path before proxying; `$n` are the capture groups of the "
        "path, which becomes a regular expression (`Exact` paths stay exact).",
        _rewrite,
    ),
    Annotation(
        "use-regex",
        "use_regex",
        '`"true"` / `"false"`',
        "Match `Prefix` and `ImplementationSpecific` paths as anchored, case-insensitive "
        "regular expressions.",
        _bool,
    ),
    Annotation(
        "ssl-redirect",
        "ssl_redirect",
        '`"true"` / `"false"`',
        "Redirect plain HTTP to HTTPS (308) for hosts a `tls` entry covers; on by default "
        'for those hosts, `"false"` turns it off.',
        _bool,
    ),
    Annotation(
        "force-ssl-redirect",
        "force_ssl_redirect",
        '`"true"` / `"false"`',
        "Redirect plain HTTP to HTTPS even for hosts without a `tls` entry.",
        _bool,
    ),
    Annotation(
        "backend-protocol",
        "backend_protocol",
        "`HTTP` / `HTTPS`",
        "Speak HTTP or HTTPS to the backend (TLS verified unless `proxy-ssl-verify` is "
        '`"off"`); GRPC, GRPCS, FCGI and AUTO_HTTP are not supported.',
        _backend_protocol,
    ),
    Annotation(
        "ssl-passthrough",
        "ssl_passthrough",
        '`"true"` / `"false"`',
        "Pass TLS for the Ingress's hosts through to the backend of the `/` path "
        "untouched (routed by SNI; no HTTP routing, no certificate here).",
        _bool,
    ),
    Annotation(
        "proxy-connect-timeout",
        "connect_timeout",
        'seconds (`"60"`) or `"5s"`',
        "Timeout for connecting to the backend.",
        _duration,
    ),
    Annotation(
        "proxy-read-timeout",
        "read_timeout",
        'seconds (`"60"`) or `"5s"`',
        "Timeout for the backend's response, and between two reads of it.",
        _duration,
    ),
    Annotation(
        "proxy-body-size",
        "max_body",
        '`"8k"`, `"1m"`, `"0"` (no limit)',
        "Largest request body accepted (larger: 413). Without it meshgate sets no "
        "limit (ingress-nginx defaults to 1m).",
        parse_size,
    ),
    Annotation(
        "whitelist-source-range",
        "allow",
        "comma-separated CIDRs",
        "Only clients from these addresses or ranges are served (others: 403). Also "
        "spelled `allowlist-source-range`.",
        parse_cidrs,
        aliases=("allowlist-source-range",),
    ),
    Annotation(
        "app-root",
        "app_root",
        "path",
        "Redirect requests for `/` to this path (302).",
        _app_root,
    ),
    Annotation(
        "proxy-ssl-name",
        "proxy_ssl_name",
        "DNS name",
        "HTTPS backends: the server name sent (SNI) and verified; default "
        "`<service>.<namespace>.svc`.",
        _server_name,
        https_backend_only=True,
    ),
    Annotation(
        "proxy-ssl-verify",
        "proxy_ssl_verify",
        '`"on"` / `"off"`',
        "HTTPS backends: verify the backend's certificate. Default on (ingress-nginx: off).",
        _on_off,
        https_backend_only=True,
    ),
    Annotation(
        "proxy-ssl-secret",
        "proxy_ssl_secret",
        "`namespace/name`",
        "HTTPS backends: a Secret whose `ca.crt` holds the CA certificates to verify "
        "the backend against (default: the system roots).",
        _secret_ref,
        https_backend_only=True,
    ),
)

_BY_KEY: dict[str, Annotation] = {key: a for a in ANNOTATIONS for key in a.keys}


@dataclass(frozen=True, slots=True)
class AnnotationProblem:
    """An annotation that cannot be honoured: `key` as written, and why."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class ParsedAnnotations:
    values: IngressAnnotations
    problems: tuple[AnnotationProblem, ...] = ()
    notes: tuple[str, ...] = ()  # annotations ignored, and why
    # IngressAnnotations attribute -> the key it was read from, for messages.
    keys: Mapping[str, str] = field(default_factory=dict)


def parse_annotations(annotations: Mapping[str, object]) -> ParsedAnnotations:
    """Read an Ingress's `metadata.annotations`; never raises."""
    problems: list[AnnotationProblem] = []
    notes: list[str] = []
    chosen: dict[str, tuple[str, object]] = {}  # field -> (key, value)
    for key in sorted(annotations, key=str):
        raw = annotations[key]
        if not isinstance(key, str):
            continue
        spec = _BY_KEY.get(key)
        if spec is None:
            if key.startswith(PREFIX):
                problems.append(AnnotationProblem(key, _unknown(key)))
            elif key.startswith(NGINX_PREFIX):
                notes.append(f"annotation {key} ignored, not supported by meshgate")
            continue
        if not isinstance(raw, str):
            problems.append(AnnotationProblem(key, not_a_string(key, raw)))
            continue
        try:
            value = spec.parse(raw)
        except ValueError as err:
            problems.append(AnnotationProblem(key, str(err)))
            continue
        earlier = chosen.get(spec.field)
        if earlier is None:
            chosen[spec.field] = (key, value)
        elif earlier[1] != value:
            problems.append(
                AnnotationProblem(
                    key, f"contradicts {earlier[0]} (both set {spec.name}, differently)"
                )
            )
    kwargs: dict[str, Any] = {attr: value for attr, (_, value) in chosen.items()}
    values = IngressAnnotations(**kwargs)
    if values.backend_protocol != "HTTPS":
        notes.extend(
            f"annotation {chosen[spec.field][0]} ignored: it applies to backend-protocol HTTPS only"
            for spec in ANNOTATIONS
            if spec.https_backend_only and spec.field in chosen
        )
    keys = {name: key for name, (key, _) in chosen.items()}
    return ParsedAnnotations(values, tuple(problems), tuple(notes), keys)


def unknown_reason(key: str, known: Iterable[str], listed: str) -> str:
    """Why `key` is refused: the closest known key, else where the list is."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    if close:
        return f"unknown annotation; did you mean {close[0]}?"
    return f"unknown annotation; see the list of {listed} in the README"


def not_a_string(key: str, value: object) -> str:
    """Why a non-string annotation value is refused (YAML `true` is not "true")."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f'annotation values are strings; quote it: {key}: "{text}"'


def _unknown(key: str) -> str:
    known = {a.key for a in ANNOTATIONS} | {PREFIX + n for a in ANNOTATIONS for n in a.aliases}
    return unknown_reason(key, known, "supported annotations")


def markdown_table() -> str:
    """The README's annotation table, one row per supported annotation."""
    lines = [
        "| Annotation | ingress-nginx alias | Value | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for spec in ANNOTATIONS:
        aliases = ", ".join(f"`{k}`" for k in spec.keys if k.startswith(NGINX_PREFIX))
        others = [f"`{PREFIX}{n}`" for n in spec.aliases]
        key = f"`{spec.key}`" + (f" ({', '.join(others)})" if others else "")
        lines.append(f"| {key} | {aliases} | {spec.value} | {spec.description} |")
    return "\n".join(lines) + "\n"
