"""Kubernetes objects -> Config: meshgate as an Ingress controller.

`translate` takes plain dicts, as parsed from manifest files (`meshgate run
--manifests DIR`) or as received from a live watch, and builds two listeners
(`ingress-http`, `ingress-https`) routing every served Ingress's hosts and
paths, plus one backend per Service port they reach. What it reads:

- Ingress (networking.k8s.io/v1) of meshgate's class: `spec.ingressClassName`
  equal to `IngressOptions.ingress_class`, or the legacy annotation
  `kubernetes.io/ingress.class`, or no class while an IngressClass whose
  `spec.controller` is ours is marked `ingressclass.kubernetes.io/is-default-class`;
- Service (v1) for the port an Ingress names, and its EndpointSlices
  (discovery.k8s.io/v1, label `kubernetes.io/service-name`) for the ready
  addresses behind it (matched by port name, as Kubernetes does); an
  ExternalName Service is its external name;
- Secret (v1, type kubernetes.io/tls) for the certificates of `spec.tls`.

Choices where Kubernetes leaves room (ingress-nginx's behaviour, mostly):

- `ImplementationSpecific` paths are prefixes; with `use-regex` or
  `rewrite-target`, `Prefix` and `ImplementationSpecific` paths are regular
  expressions (anchored, case-insensitive) and `Exact` stays exact;
- two Ingresses with the same host, path type and path: the older
  (`creationTimestamp`, then namespace/name; no timestamp counts as newest)
  keeps it and the other's path is a problem; likewise for `defaultBackend`,
  for a host's certificate and for an `ssl-passthrough` host;
- `ssl-redirect` is on for hosts a `tls` entry covers (while the https
  listener is on), `force-ssl-redirect` for any host;
- `proxy-body-size`: no limit unless set (ingress-nginx: 1m);
- HTTPS backends are verified by default (`proxy-ssl-verify: "off"` to skip),
  against the `ca.crt` of the `proxy-ssl-secret` Secret, else the system roots.

Bad input never raises. Each problem names the object ("Ingress ns/name"),
the field, and what was skipped: an invalid annotation or malformed spec
skips the Ingress (serving it without, say, its access list would be worse),
a bad path or backend skips that path. Ignored objects are notes. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from meshgate.config.annotations import IngressAnnotations, parse_annotations
from meshgate.config.merge import listeners_overlap, validate
from meshgate.config.model import (
    Backend,
    Certificate,
    Config,
    Endpoint,
    HostCertificate,
    HttpOptions,
    HttpRoute,
    Listener,
    PathType,
    TlsOptions,
    TlsRoute,
    UpstreamTls,
    check_host,
    check_listen,
    check_server_name,
    split_hostport,
)
from meshgate.errors import ConfigError, ConfigProblem

# The apiVersion meshgate reads for each kind it uses.
API_VERSIONS: Mapping[str, str] = {
    "Ingress": "networking.k8s.io/v1",
    "IngressClass": "networking.k8s.io/v1",
    "Service": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "Secret": "v1",
}
_CLUSTER_SCOPED = frozenset({"IngressClass"})
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
TLS_SECRET_TYPE = "kubernetes.io/tls"
TRANSLATION_SOURCE = "ingress translation"  # names problems of the finished Config


@dataclass(frozen=True, slots=True)
class KubeObject:
    doc: Mapping[str, Any]  # the object as parsed
    source: str  # file path (or "kubernetes" for the live watch)
    line: int | None = None  # line of the document start in the file, if known


@dataclass(frozen=True, slots=True)
class IngressOptions:
    ingress_class: str = "meshgate"
    http_listen: str = "auto:80"  # ADDR:PORT; ADDR an IP or "auto" (the mesh address); "off"
    https_listen: str = "auto:443"
    controller: str = "meshgate.io/ingress-controller"  # IngressClass spec.controller that is ours


@dataclass(frozen=True, slots=True)
class Translation:
    config: Config  # listeners + backends for everything valid
    problems: tuple[ConfigProblem, ...]  # invalid objects/fields; those were skipped
    notes: tuple[str, ...]  # ignored objects and why
    # (namespace, name) of the Ingresses of our class: whose status we write.
    served: frozenset[tuple[str, str]] = frozenset()


def parse_listen(value: str) -> tuple[str, int] | None:
    """ "auto:80", "0.0.0.0:80", "[::1]:8443" -> (address, port); "off" -> None.

    Raises ValueError naming the expected forms.
    """
    text = check_listen(value)
    if text == "off":
        return None
    host, port = split_hostport(text)
    return host, int(port)


def translate(objects: Sequence[KubeObject], options: IngressOptions) -> Translation:
    """Build the Config for every served Ingress; never raises."""
    return _Translator(options).run(objects)


# --- internals ------------------------------------------------------------------------


class _Bad(Exception):
    """A field cannot be used; what is skipped depends on where it is caught."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class _Skipped(_Bad):
    """The Ingress is skipped; its problems are reported already."""

    def __init__(self) -> None:
        super().__init__("", "")


@dataclass(frozen=True, slots=True)
class _Obj:
    kind: str
    namespace: str  # "" for cluster-scoped objects
    name: str
    doc: Mapping[str, Any]
    source: str
    line: int | None

    @property
    def label(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class _ServicePort:
    name: str  # "" when unnamed
    port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class _Service:
    type: str
    external_name: str | None
    ports: tuple[_ServicePort, ...]


@dataclass(frozen=True, slots=True)
class _Slice:
    name: str
    ports: Mapping[str, int]  # TCP port name ("" unnamed) -> number
    addresses: tuple[str, ...]  # of ready endpoints, checked


@dataclass(frozen=True, slots=True)
class _Upstream:
    """backend-protocol HTTPS settings of one Ingress."""

    sni: str | None
    insecure: bool
    ca: str | None = None  # "secret:ns/name" of the proxy-ssl-secret
    ca_pem: str | None = None


@dataclass(slots=True)
class _Pending:
    """What one Ingress contributes, committed only if the Ingress is usable."""

    routes: list[tuple[str, HttpRoute]] = field(default_factory=list)
    certificates: list[tuple[str, tuple[str, ...], Certificate]] = field(default_factory=list)
    passthrough: list[tuple[str, TlsRoute]] = field(default_factory=list)
    default_backend: tuple[str, str] | None = None  # (field, backend name)


def _kind_of(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"{type(value).__name__} {value!r:.40}"


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Bad(where, f"expected a mapping, got {_kind_of(value)}")
    return value


def _list(value: object, where: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise _Bad(where, f"expected a list, got {_kind_of(value)}")
    return value


def _str(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Bad(where, f"expected a string, got {_kind_of(value)}")
    return value


def _int(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(where, f"expected a number, got {_kind_of(value)}")
    return value


def _port(value: object, where: str) -> int | None:
    number = _int(value, where)
    if number is not None and not 1 <= number <= 65535:
        raise _Bad(where, f"port {number} out of range 1-65535")
    return number


def _pydantic_reason(err: ValidationError) -> str:
    parts = []
    for error in err.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        loc = ".".join(str(x) for x in error["loc"])
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)


def _created(doc: Mapping[str, Any]) -> datetime | None:
    meta = doc.get("metadata")
    value = meta.get("creationTimestamp") if isinstance(meta, Mapping) else None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _age(obj: _Obj) -> tuple[bool, datetime, str, str]:
    """Oldest first; no timestamp counts as newest; ties by namespace/name."""
    created = _created(obj.doc)
    return (created is None, created or datetime.min.replace(tzinfo=UTC), obj.namespace, obj.name)


def _covers(tls_hosts: Sequence[str], host: str | None) -> bool:
    """Whether a tls entry names `host` (exactly, or by a one-label wildcard)."""
    if host is None:
        return False
    if host in tls_hosts:
        return True
    if host.startswith("*.") or "." not in host:
        return False
    return f"*.{host.split('.', 1)[1]}" in tls_hosts


def _path_type(raw: str, regex: bool) -> PathType:
    if raw == "Exact":
        return "Exact"
    if raw in ("Prefix", "ImplementationSpecific"):
        return "Regex" if regex else "Prefix"
    raise ValueError(f"unknown pathType {raw!r}; expected Exact, Prefix or ImplementationSpecific")


class _Translator:
    def __init__(self, options: IngressOptions) -> None:
        self.options = options
        self.problems: list[ConfigProblem] = []
        self.notes: list[str] = []
        self.objects: dict[tuple[str, str, str], _Obj] = {}
        self.services: dict[tuple[str, str], _Service] = {}
        self.invalid_services: set[tuple[str, str]] = set()
        self.slices: dict[tuple[str, str], list[_Slice]] = {}
        self.certificate_cache: dict[tuple[str, str], Certificate | _Bad] = {}
        self.https_on = False
        # Built up Ingress by Ingress, oldest first.
        self.backends: dict[str, Backend] = {}
        self.backend_names: dict[tuple[str, UpstreamTls | None], str] = {}
        self.empty_notes: dict[str, str] = {}
        self.routes: list[HttpRoute] = []
        self.route_owner: dict[tuple[str | None, str, str], str] = {}
        self.certificates: list[HostCertificate] = []
        self.certificate_owner: dict[str, tuple[Certificate, str]] = {}
        self.passthrough: list[TlsRoute] = []
        self.passthrough_owner: dict[str, str] = {}
        self.default_backend: str | None = None
        self.default_owner = ""

    # --- reporting ---

    def _problem(self, obj: _Obj, where: str, reason: str) -> None:
        self.problems.append(ConfigProblem(obj.source, obj.label, where, reason, obj.line))

    def _note(self, text: str) -> None:
        self.notes.append(text)

    # --- the whole run ---

    def run(self, objects: Sequence[KubeObject]) -> Translation:
        listen = self._listen()
        self.https_on = listen[1] is not None
        for obj in objects:
            self._index(obj)
        for pieces in self.slices.values():
            pieces.sort(key=lambda piece: piece.name)
        served = self._select_ingresses()
        for ingress in sorted(served, key=_age):
            self._ingress(ingress)
        # The listeners exist even without an Ingress: the ports stay stable
        # while Ingresses come and go, and unknown hosts get 404, not a refusal.
        config = self._config(listen)
        return Translation(
            config,
            tuple(self.problems),
            tuple(dict.fromkeys(self.notes)),
            frozenset((obj.namespace, obj.name) for obj in served),
        )

    def _listen(self) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
        found: list[tuple[str, int] | None] = []
        for name in ("http_listen", "https_listen"):
            try:
                found.append(parse_listen(getattr(self.options, name)))
            except ValueError as err:
                self.problems.append(ConfigProblem("ingress options", "", name, str(err)))
                found.append(None)
        http, https = found
        if http is not None and https is not None:
            a = Listener(name="a", address=http[0], port=http[1], backend="x")
            b = Listener(name="b", address=https[0], port=https[1], backend="x")
            if listeners_overlap(a, b):
                reason = (
                    f"{self.options.https_listen} is the same socket as http_listen "
                    f"{self.options.http_listen}; the https listener is left out"
                )
                self.problems.append(ConfigProblem("ingress options", "", "https_listen", reason))
                https = None
        return http, https

    # --- reading objects ---

    def _index(self, item: KubeObject) -> None:
        doc = item.doc
        if not isinstance(doc, Mapping):
            reason = f"expected a Kubernetes object (a mapping with kind), got {_kind_of(doc)}"
            self.problems.append(ConfigProblem(item.source, "", "", reason, item.line))
            return
        kind = doc.get("kind")
        if not isinstance(kind, str) or not kind:
            reason = "not a Kubernetes object: 'kind' is missing"
            self.problems.append(ConfigProblem(item.source, "", "kind", reason, item.line))
            return
        meta = doc.get("metadata")
        name = meta.get("name") if isinstance(meta, Mapping) else None
        namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
        if not isinstance(name, str) or not name:
            reason = "metadata.name is missing"
            self.problems.append(
                ConfigProblem(item.source, kind, "metadata.name", reason, item.line)
            )
            return
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            reason = f"expected a namespace name, got {_kind_of(namespace)}"
            self.problems.append(
                ConfigProblem(
                    item.source, f"{kind} {name}", "metadata.namespace", reason, item.line
                )
            )
            return
        if kind not in API_VERSIONS:
            label = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
            self._note(f"{label}: ignored, meshgate does not use {kind} objects")
            return
        scope = "" if kind in _CLUSTER_SCOPED else (namespace or "default")
        obj = _Obj(kind, scope, name, doc, item.source, item.line)
        api = doc.get("apiVersion")
        # An Ingress of another apiVersion is looked at (it may be another
        # controller's); it is a problem only when it is meshgate's.
        if api != API_VERSIONS[kind] and kind != "Ingress":
            self._note(
                f"{obj.label}: ignored, apiVersion {api!r} is not supported "
                f"(meshgate reads {API_VERSIONS[kind]})"
            )
            return
        key = (kind, scope, name)
        first = self.objects.get(key)
        if first is not None:
            at = f"{first.source}:{first.line}" if first.line is not None else first.source
            self._problem(
                obj, "metadata.name", f"defined again (first at {at}); this copy is ignored"
            )
            return
        self.objects[key] = obj
        try:
            if kind == "Service":
                self.services[(scope, name)] = self._read_service(obj)
            elif kind == "EndpointSlice":
                self._read_slice(obj)
        except _Bad as bad:
            if kind == "Service":
                self.invalid_services.add((scope, name))
            self._problem(obj, bad.field, f"{bad.reason} ({kind} skipped)")

    def _read_service(self, obj: _Obj) -> _Service:
        spec = _mapping(obj.doc.get("spec"), "spec")
        kind = _str(spec.get("type"), "spec.type") or "ClusterIP"
        external = _str(spec.get("externalName"), "spec.externalName")
        if kind == "ExternalName":
            if not external:
                raise _Bad("spec.externalName", "an ExternalName Service needs spec.externalName")
            try:
                external = check_host(external.rstrip("."))
            except ValueError as err:
                raise _Bad("spec.externalName", str(err)) from None
        ports = []
        for i, raw in enumerate(_list(spec.get("ports"), "spec.ports")):
            where = f"spec.ports[{i}]"
            item = _mapping(raw, where)
            number = _port(item.get("port"), f"{where}.port")
            if number is None:
                raise _Bad(f"{where}.port", "missing port number")
            name = _str(item.get("name"), f"{where}.name") or ""
            protocol = _str(item.get("protocol"), f"{where}.protocol") or "TCP"
            ports.append(_ServicePort(name, number, protocol.upper()))
        return _Service(kind, external, tuple(ports))

    def _read_slice(self, obj: _Obj) -> None:
        meta = _mapping(obj.doc.get("metadata"), "metadata")
        labels = _mapping(meta.get("labels"), "metadata.labels")
        service = labels.get(SERVICE_NAME_LABEL)
        if not isinstance(service, str) or not service:
            self._note(f"{obj.label}: ignored, it has no label {SERVICE_NAME_LABEL}")
            return
        ports: dict[str, int] = {}
        for i, raw in enumerate(_list(obj.doc.get("ports"), "ports")):
            where = f"ports[{i}]"
            item = _mapping(raw, where)
            number = _port(item.get("port"), f"{where}.port")
            name = _str(item.get("name"), f"{where}.name") or ""
            protocol = (_str(item.get("protocol"), f"{where}.protocol") or "TCP").upper()
            if number is not None and protocol == "TCP":
                ports.setdefault(name, number)
        addresses: list[str] = []
        for i, raw in enumerate(_list(obj.doc.get("endpoints"), "endpoints")):
            where = f"endpoints[{i}]"
            endpoint = _mapping(raw, where)
            conditions = _mapping(endpoint.get("conditions"), f"{where}.conditions")
            if conditions.get("ready") is False:  # unset means ready
                continue
            for k, address in enumerate(_list(endpoint.get("addresses"), f"{where}.addresses")):
                at = f"{where}.addresses[{k}]"
                if not isinstance(address, str):
                    reason = f"expected an address, got {_kind_of(address)} (address skipped)"
                    self._problem(obj, at, reason)
                    continue
                try:
                    addresses.append(check_host(address))
                except ValueError as err:
                    self._problem(obj, at, f"{err} (address skipped)")
        self.slices.setdefault((obj.namespace, service), []).append(
            _Slice(obj.name, ports, tuple(dict.fromkeys(addresses)))
        )

    # --- which Ingresses are ours ---

    def _select_ingresses(self) -> list[_Obj]:
        default_class = False
        for (kind, _, _), obj in self.objects.items():
            if kind != "IngressClass":
                continue
            spec = obj.doc.get("spec")
            meta = obj.doc.get("metadata")
            controller = spec.get("controller") if isinstance(spec, Mapping) else None
            notes = meta.get("annotations") if isinstance(meta, Mapping) else None
            marked = notes.get(DEFAULT_CLASS_ANNOTATION) if isinstance(notes, Mapping) else None
            if controller == self.options.controller and str(marked).lower() == "true":
                default_class = True

        served = []
        ours = self.options.ingress_class
        for (kind, _, _), obj in self.objects.items():
            if kind != "Ingress":
                continue
            spec = obj.doc.get("spec")
            meta = obj.doc.get("metadata")
            notes = meta.get("annotations") if isinstance(meta, Mapping) else None
            named = spec.get("ingressClassName") if isinstance(spec, Mapping) else None
            legacy = notes.get(LEGACY_CLASS_ANNOTATION) if isinstance(notes, Mapping) else None
            chosen = named if named is not None else legacy
            if chosen is None:
                if not default_class:
                    self._note(
                        f"{obj.label}: no ingress class, and no IngressClass with controller "
                        f"{self.options.controller} is marked as the default"
                    )
                    continue
            elif chosen != ours:
                self._note(f"{obj.label}: class {chosen!r} is not meshgate's ({ours!r})")
                continue
            api = obj.doc.get("apiVersion")
            if api != API_VERSIONS["Ingress"]:
                self._problem(
                    obj,
                    "apiVersion",
                    f"apiVersion {api!r} is not supported; meshgate reads "
                    f"{API_VERSIONS['Ingress']} Ingresses (Ingress skipped)",
                )
                continue
            served.append(obj)
        return served

    # --- one Ingress ---

    def _ingress(self, obj: _Obj) -> None:
        pending = _Pending()
        try:
            self._read_ingress(obj, pending)
        except _Skipped:
            return
        except _Bad as bad:
            self._problem(obj, bad.field, f"{bad.reason} (Ingress skipped)")
            return
        self._commit(obj, pending)

    def _read_ingress(self, obj: _Obj, pending: _Pending) -> None:
        meta = _mapping(obj.doc.get("metadata"), "metadata")
        parsed = parse_annotations(_mapping(meta.get("annotations"), "metadata.annotations"))
        if parsed.problems:
            for problem in parsed.problems:
                self._problem(
                    obj,
                    f"metadata.annotations[{problem.key}]",
                    f"{problem.reason} (Ingress skipped)",
                )
            raise _Skipped
        for note in parsed.notes:
            self._note(f"{obj.label}: {note}")
        ann = parsed.values
        spec = _mapping(obj.doc.get("spec"), "spec")
        rules = _list(spec.get("rules"), "spec.rules")
        tls_entries = _list(spec.get("tls"), "spec.tls")
        upstream = self._upstream(obj, ann, parsed.keys)

        default = spec.get("defaultBackend")
        if default is not None:
            try:
                name = self._backend_ref(
                    obj, default, "spec.defaultBackend", None if ann.ssl_passthrough else upstream
                )
            except _Bad as bad:
                self._problem(obj, bad.field, f"{bad.reason} (default backend skipped)")
            else:
                pending.default_backend = ("spec.defaultBackend", name)

        if ann.ssl_passthrough:
            if tls_entries:
                self._note(f"{obj.label}: spec.tls is not used with ssl-passthrough")
            self._passthrough(obj, rules, pending)
            # Passed-through TLS never reaches HTTP routing: the defaultBackend
            # served only this Ingress's hosts without paths, above.
            pending.default_backend = None
            return
        covered = self._tls(obj, tls_entries, pending)
        for i, raw in enumerate(rules):
            where = f"spec.rules[{i}]"
            try:
                rule = _mapping(raw, where)
                host = self._host(rule, where)
                http = _mapping(rule.get("http"), f"{where}.http")
                paths = _list(http.get("paths"), f"{where}.http.paths")
            except _Bad as bad:
                self._problem(obj, bad.field, f"{bad.reason} (rule skipped)")
                continue
            if not paths:
                # A host without paths is served by the Ingress's defaultBackend.
                if host is not None and pending.default_backend is not None:
                    route = self._route(obj, ann, covered, host=host, path="/", path_type="Prefix")
                    self._add_route(obj, pending, where, route, pending.default_backend[1])
                continue
            for j, raw_path in enumerate(paths):
                path_at = f"{where}.http.paths[{j}]"
                try:
                    item = _mapping(raw_path, path_at)
                    path = _str(item.get("path"), f"{path_at}.path") or "/"
                    path_type = self._path_type(item, ann, path, path_at)
                    backend = self._backend_ref(
                        obj, item.get("backend"), f"{path_at}.backend", upstream
                    )
                    route = self._route(
                        obj, ann, covered, host=host, path=path, path_type=path_type
                    )
                except _Bad as bad:
                    self._problem(obj, bad.field, f"{bad.reason} (path skipped)")
                    continue
                self._add_route(obj, pending, path_at, route, backend)

    def _add_route(
        self, obj: _Obj, pending: _Pending, where: str, route: dict[str, Any], backend: str
    ) -> None:
        try:
            pending.routes.append((where, HttpRoute(**route, backend=backend)))
        except ValidationError as err:
            self._problem(obj, where, f"{_pydantic_reason(err)} (path skipped)")

    @staticmethod
    def _host(rule: Mapping[str, Any], where: str) -> str | None:
        host = _str(rule.get("host"), f"{where}.host")
        if not host:
            return None
        try:
            return check_server_name(host)
        except ValueError as err:
            raise _Bad(f"{where}.host", str(err)) from None

    @staticmethod
    def _path_type(
        item: Mapping[str, Any], ann: IngressAnnotations, path: str, where: str
    ) -> PathType:
        raw = _str(item.get("pathType"), f"{where}.pathType")
        if raw is None:
            raise _Bad(f"{where}.pathType", "missing (Exact, Prefix or ImplementationSpecific)")
        try:
            path_type = _path_type(raw, ann.use_regex or ann.rewrite_target is not None)
        except ValueError as err:
            raise _Bad(f"{where}.pathType", str(err)) from None
        if not path.startswith("/"):
            raise _Bad(f"{where}.path", f"a path starts with '/', got {path!r}")
        if path_type == "Regex":
            try:
                re.compile(path)
            except re.error as err:
                raise _Bad(f"{where}.path", f"not a valid regular expression: {err}") from None
        return path_type

    def _route(
        self,
        obj: _Obj,
        ann: IngressAnnotations,
        covered: Sequence[str],
        *,
        host: str | None,
        path: str,
        path_type: PathType,
    ) -> dict[str, Any]:
        """The HttpRoute fields for one path, but its backend."""
        redirect = ann.force_ssl_redirect or (
            self.https_on and ann.ssl_redirect is not False and _covers(covered, host)
        )
        return {
            "host": host,
            "path": path,
            "path_type": path_type,
            "rewrite_target": ann.rewrite_target,
            "ssl_redirect": redirect,
            "app_root": ann.app_root,
            "allow": ann.allow,
            "max_body": ann.max_body,
            "connect_timeout": ann.connect_timeout,
            "read_timeout": ann.read_timeout,
            "origin": obj.label,
        }

    def _upstream(
        self, obj: _Obj, ann: IngressAnnotations, keys: Mapping[str, str]
    ) -> _Upstream | None:
        if ann.backend_protocol != "HTTPS":
            return None
        if ann.proxy_ssl_secret is not None and ann.proxy_ssl_verify:
            where = f"metadata.annotations[{keys.get('proxy_ssl_secret', 'proxy-ssl-secret')}]"
            namespace, name = ann.proxy_ssl_secret
            secret = self.objects.get(("Secret", namespace, name))
            if secret is None:
                raise _Bad(where, f"Secret {namespace}/{name} not found")
            ca_pem = self._secret_pem(secret, "ca.crt", where)
            return _Upstream(ann.proxy_ssl_name, False, f"secret:{namespace}/{name}", ca_pem)
        return _Upstream(ann.proxy_ssl_name, not ann.proxy_ssl_verify)

    def _tls(self, obj: _Obj, entries: Sequence[Any], pending: _Pending) -> list[str]:
        """Certificates of `spec.tls`; returns every host the entries name."""
        covered: list[str] = []
        for k, raw in enumerate(entries):
            where = f"spec.tls[{k}]"
            try:
                entry = _mapping(raw, where)
                names = _list(entry.get("hosts"), f"{where}.hosts")
                secret = _str(entry.get("secretName"), f"{where}.secretName")
            except _Bad as bad:
                self._problem(obj, bad.field, f"{bad.reason} (tls entry skipped)")
                continue
            hosts: list[str] = []
            for m, name in enumerate(names):
                try:
                    if not isinstance(name, str):
                        raise ValueError(f"expected a host name, got {_kind_of(name)}")
                    hosts.append(check_server_name(name))
                except ValueError as err:
                    self._problem(obj, f"{where}.hosts[{m}]", f"{err} (host skipped)")
            hosts = list(dict.fromkeys(hosts))
            covered.extend(hosts)
            if not secret:
                continue  # the listener's default certificate
            if not hosts:
                self._problem(
                    obj,
                    f"{where}.hosts",
                    f"lists no hosts, so the certificate of Secret {obj.namespace}/{secret} "
                    "serves none; list the hosts it is for",
                )
                continue
            try:
                certificate = self._certificate(obj.namespace, secret)
            except _Bad as bad:
                self._problem(
                    obj,
                    f"{where}.secretName",
                    f"{bad.reason}; {', '.join(hosts)} get the default certificate",
                )
                continue
            pending.certificates.append((where, tuple(hosts), certificate))
        return covered

    def _certificate(self, namespace: str, name: str) -> Certificate:
        key = (namespace, name)
        if key not in self.certificate_cache:
            try:
                self.certificate_cache[key] = self._read_certificate(namespace, name)
            except _Bad as bad:
                self.certificate_cache[key] = bad
        found = self.certificate_cache[key]
        if isinstance(found, _Bad):
            raise found
        return found

    def _read_certificate(self, namespace: str, name: str) -> Certificate:
        secret = self.objects.get(("Secret", namespace, name))
        if secret is None:
            raise _Bad("", f"Secret {namespace}/{name} not found")
        kind = secret.doc.get("type")
        if kind != TLS_SECRET_TYPE:
            raise _Bad("", f"Secret {namespace}/{name} has type {kind!r}, not {TLS_SECRET_TYPE}")
        origin = f"secret:{namespace}/{name}"
        return Certificate(
            cert=origin,
            key=origin,
            cert_pem=self._secret_pem(secret, "tls.crt", ""),
            key_pem=self._secret_pem(secret, "tls.key", ""),
        )

    @staticmethod
    def _secret_pem(secret: _Obj, key: str, where: str) -> str:
        """PEM text from a Secret's stringData or (base64) data; never shown in messages."""
        label = f"Secret {secret.namespace}/{secret.name}"
        string_data = secret.doc.get("stringData")
        data = secret.doc.get("data")
        if isinstance(string_data, Mapping) and isinstance(string_data.get(key), str):
            text = str(string_data[key])
        elif isinstance(data, Mapping) and key in data:
            value = data[key]
            if not isinstance(value, str):
                raise _Bad(where, f"{label}: data[{key}] is not base64 text")
            try:
                raw = base64.b64decode("".join(value.split()), validate=True)
                text = raw.decode("utf-8")
            except (binascii.Error, ValueError):
                raise _Bad(where, f"{label}: data[{key}] is not valid base64 of PEM text") from None
        else:
            raise _Bad(where, f"{label} has no {key}")
        if "-----BEGIN" not in text:
            raise _Bad(where, f"{label}: {key} does not look like PEM (no -----BEGIN line)")
        return text

    def _passthrough(self, obj: _Obj, rules: Sequence[Any], pending: _Pending) -> None:
        hosts = 0
        for i, raw in enumerate(rules):
            where = f"spec.rules[{i}]"
            try:
                rule = _mapping(raw, where)
                host = self._host(rule, where)
                if host is None:
                    raise _Bad(
                        f"{where}.host",
                        "ssl-passthrough routes by server name (SNI); a rule needs a host",
                    )
                hosts += 1
                http = _mapping(rule.get("http"), f"{where}.http")
                paths = _list(http.get("paths"), f"{where}.http.paths")
                backend = self._passthrough_backend(obj, host, paths, where, pending)
                route = TlsRoute(sni=(host,), mode="passthrough", backend=backend)
            except _Bad as bad:
                self._problem(obj, bad.field, f"{bad.reason} (rule skipped)")
                continue
            except ValidationError as err:
                self._problem(obj, where, f"{_pydantic_reason(err)} (rule skipped)")
                continue
            pending.passthrough.append((where, route))
        if not hosts:
            raise _Bad(
                "spec.rules",
                "ssl-passthrough needs rules with a host: TLS is passed through by server name",
            )

    def _passthrough_backend(
        self, obj: _Obj, host: str, paths: Sequence[Any], where: str, pending: _Pending
    ) -> str:
        if not paths:
            if pending.default_backend is None:
                raise _Bad(f"{where}.http.paths", "no paths and no defaultBackend to pass to")
            return pending.default_backend[1]
        chosen = 0
        for j, raw in enumerate(paths):
            if isinstance(raw, Mapping) and raw.get("path") in (None, "", "/"):
                chosen = j
                break
        if len(paths) > 1:
            self._note(
                f"{obj.label}: ssl-passthrough sends all of {host} to the backend of "
                f"{where}.http.paths[{chosen}]; its other paths are not used"
            )
        path_at = f"{where}.http.paths[{chosen}]"
        item = _mapping(paths[chosen], path_at)
        return self._backend_ref(obj, item.get("backend"), f"{path_at}.backend", None)

    # --- backends ---

    def _backend_ref(self, obj: _Obj, raw: object, where: str, upstream: _Upstream | None) -> str:
        ref = _mapping(raw, where)
        if ref.get("resource") is not None:
            raise _Bad(
                f"{where}.resource", "resource backends are not supported; use a service backend"
            )
        service = _mapping(ref.get("service"), f"{where}.service")
        if not service:
            raise _Bad(f"{where}.service", "missing: a backend names a service")
        return self._service_backend(obj.namespace, service, f"{where}.service", upstream)

    def _service_backend(
        self, namespace: str, ref: Mapping[str, Any], where: str, upstream: _Upstream | None
    ) -> str:
        name = _str(ref.get("name"), f"{where}.name")
        if not name:
            raise _Bad(f"{where}.name", "missing service name")
        port = _mapping(ref.get("port"), f"{where}.port")
        number = _port(port.get("number"), f"{where}.port.number")
        port_name = _str(port.get("name"), f"{where}.port.name")
        if number is None and not port_name:
            raise _Bad(f"{where}.port", "give port.number or port.name")
        port_at = f"{where}.port.number" if number is not None else f"{where}.port.name"
        service = self.services.get((namespace, name))
        if service is None:
            if (namespace, name) in self.invalid_services:
                reason = f"Service {namespace}/{name} is invalid (see the problem reported for it)"
            else:
                reason = f"Service {namespace}/{name} not found"
            raise _Bad(f"{where}.name", reason)
        match = next(
            (
                p
                for p in service.ports
                if p.protocol == "TCP"
                and (p.port == number if number is not None else p.name == port_name)
            ),
            None,
        )
        wanted = str(number) if number is not None else repr(port_name)
        if service.type == "ExternalName" and service.external_name is not None:
            target = match.port if match is not None else number
            if target is None:
                raise _Bad(port_at, f"Service {namespace}/{name} has no port named {port_name!r}")
            endpoints: tuple[tuple[str, int], ...] = ((service.external_name, target),)
            sni = None  # the endpoint's host name: the external name
        else:
            if match is None:
                known = ", ".join(
                    f"{p.port} ({p.name})" if p.name else str(p.port)
                    for p in service.ports
                    if p.protocol == "TCP"
                )
                raise _Bad(
                    port_at,
                    f"Service {namespace}/{name} has no TCP port {wanted} "
                    f"(it has: {known or 'none'})",
                )
            target = match.port
            endpoints = self._endpoints(namespace, name, match.name)
            sni = f"{name}.{namespace}.svc"
        tls = None
        if upstream is not None:
            try:
                tls = UpstreamTls(
                    sni=upstream.sni or sni,
                    insecure_skip_verify=upstream.insecure,
                    ca=upstream.ca,
                    ca_pem=upstream.ca_pem,
                )
            except ValidationError as err:
                raise _Bad(f"{where}.name", _pydantic_reason(err)) from None
        return self._register(namespace, name, target, endpoints=endpoints, tls=tls, where=where)

    def _endpoints(
        self, namespace: str, service: str, port_name: str
    ) -> tuple[tuple[str, int], ...]:
        found: dict[tuple[str, int], None] = {}
        for piece in self.slices.get((namespace, service), ()):
            port = piece.ports.get(port_name)
            if port is None:
                continue
            for address in piece.addresses:
                found[(address, port)] = None
        return tuple(found)

    def _register(
        self,
        namespace: str,
        service: str,
        port: int,
        *,
        endpoints: tuple[tuple[str, int], ...],
        tls: UpstreamTls | None,
        where: str,
    ) -> str:
        base = f"{namespace}.{service}.{port}"
        existing = self.backend_names.get((base, tls))
        if existing is not None:
            return existing
        name = base
        if tls is not None:
            variants = sum(1 for b, t in self.backend_names if b == base and t is not None)
            name = f"{base}.https" if variants == 0 else f"{base}.https{variants + 1}"
        try:
            backend = Backend(
                name=name,
                endpoints=tuple(Endpoint(host=h, port=p) for h, p in endpoints),
                balance="round_robin",
                tls=tls,
                allow_empty=True,
            )
        except ValidationError as err:
            raise _Bad(f"{where}.name", _pydantic_reason(err)) from None
        self.backends[name] = backend
        self.backend_names[(base, tls)] = name
        if not endpoints:
            self.empty_notes[name] = (
                f"Service {namespace}/{service} port {port}: no ready endpoints, "
                f"backend {name} answers 503 until there are"
            )
        return name

    # --- conflicts between Ingresses, oldest first ---

    def _commit(self, obj: _Obj, pending: _Pending) -> None:
        if pending.default_backend is not None:
            where, name = pending.default_backend
            if self.default_backend is None:
                self.default_backend, self.default_owner = name, obj.label
            else:
                self._problem(
                    obj,
                    where,
                    f"{self.default_owner} is older and already sets the default backend "
                    "(default backend skipped)",
                )
        for where, route in pending.routes:
            key = (route.host, route.path_type, route.path)
            owner = self.route_owner.get(key)
            if owner is None:
                self.route_owner[key] = obj.label
                self.routes.append(route)
                continue
            by = (
                "an earlier path of this Ingress"
                if owner == obj.label
                else f"{owner}, which is older"
            )
            self._problem(
                obj,
                where,
                f"{route.host or '*'} {route.path} ({route.path_type}) is also routed by "
                f"{by} (path skipped)",
            )
        for where, hosts, certificate in pending.certificates:
            kept = []
            for host in hosts:
                first = self.certificate_owner.get(host)
                if first is None:
                    self.certificate_owner[host] = (certificate, obj.label)
                    kept.append(host)
                elif first[0] != certificate:
                    self._problem(
                        obj,
                        where,
                        f"host {host} already has the certificate {first[0].cert} from "
                        f"{first[1]}, which is older; {certificate.cert} is not used for it",
                    )
                # else: the same certificate is already set for the host
            if kept:
                self.certificates.append(
                    HostCertificate(hosts=tuple(kept), certificate=certificate)
                )
        for where, tls_route in pending.passthrough:
            host = tls_route.sni[0]
            owner = self.passthrough_owner.setdefault(host, obj.label)
            if owner != obj.label:
                self._problem(
                    obj,
                    where,
                    f"ssl-passthrough for {host} is already set by {owner}, which is older "
                    "(rule skipped)",
                )
            elif any(r.sni == tls_route.sni for r in self.passthrough):
                self._problem(obj, where, f"ssl-passthrough for {host} is set twice (rule skipped)")
            else:
                self.passthrough.append(tls_route)

    # --- the Config ---

    def _grouped_certificates(self) -> tuple[HostCertificate, ...]:
        """One entry per certificate, listing every host it serves."""
        hosts: dict[Certificate, list[str]] = {}
        for entry in self.certificates:
            hosts.setdefault(entry.certificate, []).extend(entry.hosts)
        return tuple(
            HostCertificate(hosts=tuple(names), certificate=certificate)
            for certificate, names in hosts.items()
        )

    def _config(self, listen: tuple[tuple[str, int] | None, tuple[str, int] | None]) -> Config:
        http, https = listen
        options = HttpOptions(
            routes=tuple(self.routes),
            default_backend=self.default_backend,
            https_port=https[1] if https is not None else 443,
        )
        listeners = []
        if http is not None:
            listeners.append(
                Listener(
                    name="ingress-http",
                    address=http[0],
                    port=http[1],
                    protocol="http",
                    http=options,
                )
            )
        if https is not None:
            listeners.append(
                Listener(
                    name="ingress-https",
                    address=https[0],
                    port=https[1],
                    protocol="https",
                    http=options,
                    routes=tuple(self.passthrough),
                    tls=TlsOptions(certificates=self._grouped_certificates()),
                )
            )
        elif self.passthrough:
            hosts = ", ".join(r.sni[0] for r in self.passthrough)
            self._note(f"ssl-passthrough for {hosts} is not served: the https listener is off")
        used = {name for listener in listeners for name in listener.backends}
        backends = tuple(b for name, b in sorted(self.backends.items()) if name in used)
        for name in sorted(used & self.empty_notes.keys()):
            self._note(self.empty_notes[name])
        try:
            config = Config(listeners=tuple(listeners), backends=backends)
            validate(config, TRANSLATION_SOURCE)
        except ConfigError as err:  # a bug here, not in the objects: serve nothing
            self.problems.extend(err.problems)
            return Config()
        except ValidationError as err:
            self.problems.append(ConfigProblem(TRANSLATION_SOURCE, "", "", _pydantic_reason(err)))
            return Config()
        return config
