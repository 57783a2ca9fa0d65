"""Kubernetes objects -> Config: what an Ingress user sees routed, skipped and reported.

Objects are written as the plain dicts a YAML file or the API server gives;
`run` translates them and checks what must hold for any input: the Config
passes `merge.validate`, and every route names a backend the Config defines.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.config.manifests import (
    TRANSLATION_SOURCE,
    IngressOptions,
    KubeObject,
    Translation,
    parse_listen,
    translate,
)
from meshgate.config.merge import validate
from meshgate.config.model import Backend, Certificate, HttpRoute, Listener, UpstreamTls

CERT_PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIGHfake\n-----END PRIVATE KEY-----\n"

Doc = dict[str, Any]


# --- object builders ----------------------------------------------------------------------


def _meta(name: str, ns: str | None, **extra: Any) -> Doc:
    meta: Doc = {"name": name, **{k: v for k, v in extra.items() if v is not None}}
    if ns is not None:
        meta["namespace"] = ns
    return meta


def path(
    p: str | None = "/",
    svc: str = "web",
    port: int | str = 80,
    path_type: str | None = "Prefix",
) -> Doc:
    key = "number" if isinstance(port, int) else "name"
    item: Doc = {"backend": {"service": {"name": svc, "port": {key: port}}}}
    if p is not None:
        item["path"] = p
    if path_type is not None:
        item["pathType"] = path_type
    return item


def rule(host: str | None, *paths: Doc) -> Doc:
    out: Doc = {"http": {"paths": list(paths)}}
    if host is not None:
        out["host"] = host
    return out


def ingress(
    name: str = "web",
    *rules: Doc,
    ns: str | None = None,
    cls: str | None = "meshgate",
    annotations: dict[str, Any] | None = None,
    tls: list[Doc] | None = None,
    default: Doc | None = None,
    created: str | None = None,
) -> Doc:
    spec: Doc = {}
    if cls is not None:
        spec["ingressClassName"] = cls
    if rules:
        spec["rules"] = list(rules)
    if tls is not None:
        spec["tls"] = tls
    if default is not None:
        spec["defaultBackend"] = default
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(name, ns, annotations=annotations, creationTimestamp=created),
        "spec": spec,
    }


def web_ingress(name: str = "web", host: str | None = "web.example.com", **kw: Any) -> Doc:
    return ingress(name, rule(host, path()), **kw)


def service(
    name: str = "web",
    ports: tuple[tuple[str | None, int], ...] = (("http", 80),),
    *,
    ns: str | None = None,
    target: int | str = 8080,
    type_: str | None = None,
    external: str | None = None,
) -> Doc:
    spec: Doc = {"ports": []}
    for port_name, number in ports:
        entry: Doc = {"port": number, "targetPort": target}
        if port_name is not None:
            entry["name"] = port_name
        spec["ports"].append(entry)
    if type_ is not None:
        spec["type"] = type_
    if external is not None:
        spec["externalName"] = external
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, ns), "spec": spec}


def endpoint_slice(
    svc: str = "web",
    *addresses: str,
    name: str | None = None,
    ns: str | None = None,
    ports: tuple[tuple[str | None, int], ...] = (("http", 8080),),
    not_ready: tuple[str, ...] = (),
    address_type: str = "IPv4",
) -> Doc:
    endpoints = [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]
    endpoints += [{"addresses": [a], "conditions": {"ready": False}} for a in not_ready]
    port_list = []
    for port_name, number in ports:
        entry: Doc = {"port": number, "protocol": "TCP"}
        if port_name is not None:
            entry["name"] = port_name
        port_list.append(entry)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _meta(name or f"{svc}-abcde", ns, labels={"kubernetes.io/service-name": svc}),
        "addressType": address_type,
        "ports": port_list,
        "endpoints": endpoints,
    }


def secret(
    name: str = "web-tls",
    *,
    ns: str | None = None,
    crt: str = CERT_PEM,
    key: str = KEY_PEM,
    type_: str = "kubernetes.io/tls",
    raw: dict[str, str] | None = None,
) -> Doc:
    data = raw or {
        "tls.crt": base64.b64encode(crt.encode()).decode(),
        "tls.key": base64.b64encode(key.encode()).decode(),
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(name, ns),
        "type": type_,
        "data": data,
    }


def ingress_class(name: str, controller: str, default: bool) -> Doc:
    annotations = {"ingressclass.kubernetes.io/is-default-class": "true"} if default else None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": _meta(name, None, annotations=annotations),
        "spec": {"controller": controller},
    }


WEB = (service(), endpoint_slice("web", "10.0.0.1"))


def run(*docs: Any, options: IngressOptions | None = None) -> Translation:
    objects = [KubeObject(doc, "test.yaml", 10 * i + 1) for i, doc in enumerate(docs)]
    result = translate(objects, options or IngressOptions())
    validate(result.config, "test")
    defined = {b.name for b in result.config.backends}
    for listener in result.config.listeners:
        assert set(listener.backends) <= defined, listener.backends
    # Every backend is used by some listener (unused ones are dropped).
    used = {name for listener in result.config.listeners for name in listener.backends}
    assert defined == used
    # Problems are about the objects, never about the Config built from them.
    assert all(p.source != TRANSLATION_SOURCE for p in result.problems)
    return result


def listener(result: Translation, name: str) -> Listener:
    [found] = [x for x in result.config.listeners if x.name == name]
    return found


def routes(result: Translation) -> tuple[HttpRoute, ...]:
    http = listener(result, "ingress-http").http
    assert http is not None
    https = listener(result, "ingress-https").http
    assert https is not None
    assert https.routes == http.routes
    return http.routes


def backend(result: Translation, name: str | None) -> Backend:
    [found] = [b for b in result.config.backends if b.name == name]
    return found


def problem_text(result: Translation) -> list[str]:
    return [str(p) for p in result.problems]


# --- ingress class ------------------------------------------------------------------------


def test_ingress_with_meshgate_class_is_served_on_two_listeners() -> None:
    result = run(web_ingress(), *WEB)
    assert result.problems == ()
    http, https = result.config.listeners
    assert (http.name, http.address, http.port, http.protocol) == (
        "ingress-http",
        "auto",
        80,
        "http",
    )
    assert (https.name, https.address, https.port, https.protocol) == (
        "ingress-https",
        "auto",
        443,
        "https",
    )
    [route] = routes(result)
    assert route == HttpRoute(
        host="web.example.com",
        path="/",
        path_type="Prefix",
        backend="default.web.80",
        origin="Ingress default/web",
    )
    assert http.http is not None
    assert http.http.https_port == 443


def test_ingress_of_another_class_is_skipped_with_a_note() -> None:
    result = run(web_ingress(cls="nginx"), *WEB)
    assert routes(result) == ()
    assert result.config.backends == ()
    assert result.problems == ()
    assert "Ingress default/web: class 'nginx' is not meshgate's ('meshgate')" in result.notes


def test_the_class_served_is_an_option() -> None:
    options = IngressOptions(ingress_class="internal")
    assert run(web_ingress(cls="internal"), *WEB, options=options).config.listeners
    skipped = run(web_ingress(), *WEB, options=options)
    assert routes(skipped) == ()
    assert "Ingress default/web: class 'meshgate' is not meshgate's ('internal')" in skipped.notes


def test_ingress_without_class_is_served_when_our_ingressclass_is_the_default() -> None:
    ours = ingress_class("meshgate", "meshgate.io/ingress-controller", default=True)
    result = run(web_ingress(cls=None), ours, *WEB)
    assert [r.host for r in routes(result)] == ["web.example.com"]


def test_ingress_without_class_is_skipped_when_the_default_class_is_someone_elses() -> None:
    nginx = ingress_class("nginx", "k8s.io/ingress-nginx", default=True)
    not_default = ingress_class("meshgate", "meshgate.io/ingress-controller", default=False)
    result = run(web_ingress(cls=None), nginx, not_default, *WEB)
    assert routes(result) == ()
    [note] = [n for n in result.notes if n.startswith("Ingress default/web")]
    assert "no ingress class" in note


def test_legacy_class_annotation_is_honoured() -> None:
    ours = web_ingress(cls=None, annotations={"kubernetes.io/ingress.class": "meshgate"})
    theirs = web_ingress("other", cls=None, annotations={"kubernetes.io/ingress.class": "nginx"})
    result = run(ours, theirs, *WEB)
    assert [r.origin for r in routes(result)] == ["Ingress default/web"]
    assert "Ingress default/other: class 'nginx' is not meshgate's ('meshgate')" in result.notes


def test_ingress_of_an_old_api_version_is_a_problem_when_it_is_ours() -> None:
    old = web_ingress() | {"apiVersion": "extensions/v1beta1"}
    other = web_ingress("theirs", cls="nginx") | {"apiVersion": "extensions/v1beta1"}
    result = run(old, other, *WEB)
    [problem] = result.problems
    assert problem.object == "Ingress default/web"
    assert problem.field == "apiVersion"
    assert "networking.k8s.io/v1" in problem.reason


# --- backends -----------------------------------------------------------------------------


def test_service_port_by_number_resolves_to_the_slice_port_and_ready_addresses() -> None:
    result = run(
        web_ingress(),
        service(),
        endpoint_slice("web", "10.0.0.1", "10.0.0.2", not_ready=("10.0.0.3",)),
        endpoint_slice("other", "10.9.9.9"),
    )
    web = backend(result, "default.web.80")
    assert [str(e) for e in web.endpoints] == ["10.0.0.1:8080", "10.0.0.2:8080"]
    assert web.allow_empty
    assert web.balance == "round_robin"
    assert web.tls is None


def test_service_port_by_name_is_the_same_backend_as_by_number() -> None:
    result = run(
        ingress("web", rule("a.example.com", path(port="http"), path("/x", port=80))), *WEB
    )
    assert [r.backend for r in routes(result)] == ["default.web.80", "default.web.80"]
    assert len(result.config.backends) == 1


def test_slice_port_is_matched_by_the_service_port_name_not_the_target_port() -> None:
    # Service port "http" targets the container port named "web"; the slice
    # carries the resolved number under the Service port's name.
    result = run(
        web_ingress(),
        service(target="web"),
        endpoint_slice("web", "10.0.0.1", ports=(("metrics", 9090), ("http", 8081))),
    )
    assert [str(e) for e in backend(result, "default.web.80").endpoints] == ["10.0.0.1:8081"]


def test_unnamed_service_port_matches_the_unnamed_slice_port() -> None:
    result = run(
        web_ingress(),
        service(ports=((None, 80),)),
        endpoint_slice("web", "10.0.0.1", ports=((None, 9000),)),
    )
    assert [str(e) for e in backend(result, "default.web.80").endpoints] == ["10.0.0.1:9000"]


def test_endpoint_without_ready_condition_counts_as_ready() -> None:
    piece = endpoint_slice("web")
    piece["endpoints"] = [
        {"addresses": ["10.0.0.7"]},
        {"addresses": ["10.0.0.8"], "conditions": {}},
    ]
    result = run(web_ingress(), service(), piece)
    assert [e.host for e in backend(result, "default.web.80").endpoints] == [
        "10.0.0.7",
        "10.0.0.8",
    ]


def test_addresses_of_several_slices_are_joined_without_repeats() -> None:
    result = run(
        web_ingress(),
        service(),
        endpoint_slice("web", "10.0.0.2", "10.0.0.1", name="web-b"),
        endpoint_slice("web", "10.0.0.1", name="web-a"),
    )
    assert [e.host for e in backend(result, "default.web.80").endpoints] == [
        "10.0.0.1",
        "10.0.0.2",
    ]


def test_ipv6_endpoints() -> None:
    result = run(
        web_ingress(),
        service(),
        endpoint_slice("web", "FD00::0001", address_type="IPv6"),
    )
    [endpoint] = backend(result, "default.web.80").endpoints
    assert str(endpoint) == "[fd00::1]:8080"


def test_service_without_ready_endpoints_is_an_empty_backend_and_a_note() -> None:
    result = run(web_ingress(), service(), endpoint_slice("web", not_ready=("10.0.0.1",)))
    web = backend(result, "default.web.80")
    assert web.endpoints == ()
    assert web.allow_empty
    assert result.problems == ()
    assert any("Service default/web port 80: no ready endpoints" in n for n in result.notes)


def test_external_name_service_is_one_endpoint_at_its_name() -> None:
    result = run(
        web_ingress(),
        service(ports=(), type_="ExternalName", external="Web.Example.NET."),
    )
    [endpoint] = backend(result, "default.web.80").endpoints
    assert str(endpoint) == "Web.Example.NET:80"


def test_backends_resolve_in_the_ingress_namespace() -> None:
    result = run(
        web_ingress(ns="shop"),
        service(ns="shop"),
        endpoint_slice("web", "10.1.0.1", ns="shop"),
        *WEB,
    )
    [route] = routes(result)
    assert route.backend == "shop.web.80"
    assert route.origin == "Ingress shop/web"
    assert [e.host for e in backend(result, "shop.web.80").endpoints] == ["10.1.0.1"]


def test_missing_service_is_a_problem_on_that_path_only() -> None:
    result = run(
        ingress("web", rule("a.example.com", path("/"), path("/gone", svc="gone"))),
        *WEB,
    )
    assert [r.path for r in routes(result)] == ["/"]
    [problem] = result.problems
    assert problem.source == "test.yaml"
    assert problem.line == 1
    assert problem.object == "Ingress default/web"
    assert problem.field == "spec.rules[0].http.paths[1].backend.service.name"
    assert "Service default/gone not found" in problem.reason


def test_service_in_another_namespace_is_not_found() -> None:
    result = run(web_ingress(ns="shop"), *WEB)
    [problem] = result.problems
    assert "Service shop/web not found" in problem.reason


@pytest.mark.parametrize(
    ("port", "field"),
    [(81, "port.number"), ("https", "port.name")],
)
def test_port_the_service_lacks_is_a_problem(port: int | str, field: str) -> None:
    result = run(ingress("web", rule("a.example.com", path(port=port))), *WEB)
    [problem] = result.problems
    assert problem.field == f"spec.rules[0].http.paths[0].backend.service.{field}"
    assert "has no TCP port" in problem.reason
    assert "it has: 80 (http)" in problem.reason


def test_resource_backend_is_unsupported() -> None:
    item: Doc = {
        "path": "/",
        "pathType": "Prefix",
        "backend": {"resource": {"apiGroup": "k8s.example.com", "kind": "Bucket", "name": "b"}},
    }
    result = run(ingress("web", rule("a.example.com", item, path("/web"))), *WEB)
    assert [r.path for r in routes(result)] == ["/web"]
    [problem] = result.problems
    assert problem.field == "spec.rules[0].http.paths[0].backend.resource"
    assert "not supported" in problem.reason


def test_services_no_ingress_uses_are_not_backends() -> None:
    result = run(web_ingress(), *WEB, service("unused"), endpoint_slice("unused", "10.0.0.9"))
    assert [b.name for b in result.config.backends] == ["default.web.80"]


# --- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "given", "expected"),
    [
        ({}, "Exact", "Exact"),
        ({}, "Prefix", "Prefix"),
        ({}, "ImplementationSpecific", "Prefix"),
        ({"meshgate.io/use-regex": "true"}, "ImplementationSpecific", "Regex"),
        ({"meshgate.io/use-regex": "true"}, "Prefix", "Regex"),
        ({"meshgate.io/use-regex": "true"}, "Exact", "Exact"),
        ({"meshgate.io/use-regex": "false"}, "ImplementationSpecific", "Prefix"),
        ({"meshgate.io/rewrite-target": "/$1"}, "Prefix", "Regex"),
        ({"meshgate.io/rewrite-target": "/$1"}, "ImplementationSpecific", "Regex"),
        ({"meshgate.io/rewrite-target": "/$1"}, "Exact", "Exact"),
    ],
)
def test_path_types(annotations: dict[str, str], given: str, expected: str) -> None:
    doc = ingress(
        "web", rule("a.example.com", path("/api", path_type=given)), annotations=annotations
    )
    [route] = routes(run(doc, *WEB))
    assert route.path_type == expected


def test_rewrite_target_keeps_the_regex_path_and_sets_the_target() -> None:
    doc = ingress(
        "web",
        rule("a.example.com", path("/api(/|$)(.*)", path_type="ImplementationSpecific")),
        annotations={"nginx.ingress.kubernetes.io/rewrite-target": "/$2"},
    )
    [route] = routes(run(doc, *WEB))
    assert (route.path, route.path_type, route.rewrite_target) == ("/api(/|$)(.*)", "Regex", "/$2")


def test_missing_path_is_the_root() -> None:
    [route] = routes(run(ingress("web", rule("a.example.com", path(None))), *WEB))
    assert route.path == "/"


@pytest.mark.parametrize(
    ("item", "annotations", "field", "reason"),
    [
        (path("api"), {}, "path", "a path starts with '/', got 'api'"),
        (path("api", path_type="Exact"), {}, "path", "starts with '/'"),
        (
            path("/api(", path_type="ImplementationSpecific"),
            {"meshgate.io/use-regex": "true"},
            "path",
            "not a valid regular expression",
        ),
        (path("/", path_type=None), {}, "pathType", "missing"),
        (path("/", path_type="Glob"), {}, "pathType", "unknown pathType 'Glob'"),
    ],
)
def test_invalid_path_is_a_problem_and_skipped(
    item: Doc, annotations: dict[str, str], field: str, reason: str
) -> None:
    doc = ingress("web", rule("a.example.com", item, path("/ok")), annotations=annotations)
    result = run(doc, *WEB)
    assert [r.path for r in routes(result)] == ["/ok"]
    [problem] = result.problems
    assert problem.field == f"spec.rules[0].http.paths[0].{field}"
    assert reason in problem.reason
    assert "(path skipped)" in problem.reason


def test_wildcard_host_and_rule_without_host() -> None:
    doc = ingress("web", rule("*.Example.com", path()), rule(None, path("/any")))
    hosts = [(r.host, r.path) for r in routes(run(doc, *WEB))]
    assert hosts == [("*.example.com", "/"), (None, "/any")]


def test_invalid_host_is_a_problem_on_the_rule() -> None:
    doc = ingress("web", rule("bad_host!.example.com", path()), rule("ok.example.com", path()))
    result = run(doc, *WEB)
    assert [r.host for r in routes(result)] == ["ok.example.com"]
    [problem] = result.problems
    assert problem.field == "spec.rules[0].host"
    assert "(rule skipped)" in problem.reason


def test_several_ingresses_for_one_host_merge() -> None:
    a = ingress("a", rule("shop.example.com", path("/cart")))
    b = ingress("b", rule("shop.example.com", path("/pay")))
    result = run(a, b, *WEB)
    assert [(r.host, r.path, r.origin) for r in routes(result)] == [
        ("shop.example.com", "/cart", "Ingress default/a"),
        ("shop.example.com", "/pay", "Ingress default/b"),
    ]
    assert result.problems == ()


# --- conflicts ----------------------------------------------------------------------------


def test_same_path_in_two_ingresses_the_oldest_wins() -> None:
    newer = ingress("aaa", rule("a.example.com", path(svc="web")), created="2024-05-01T00:00:00Z")
    older = ingress("zzz", rule("a.example.com", path(svc="api")), created="2023-01-01T00:00:00Z")
    result = run(newer, older, *WEB, service("api"), endpoint_slice("api", "10.0.0.5"))
    [route] = routes(result)
    assert route.origin == "Ingress default/zzz"
    assert route.backend == "default.api.80"
    [problem] = result.problems
    assert problem.object == "Ingress default/aaa"
    assert problem.field == "spec.rules[0].http.paths[0]"
    assert "Ingress default/zzz" in problem.reason
    assert "older" in problem.reason


def test_same_timestamp_is_decided_by_namespace_then_name() -> None:
    stamp = "2024-01-01T00:00:00Z"
    docs = [
        ingress("a", rule("a.example.com", path()), ns="zz", created=stamp),
        ingress("b", rule("a.example.com", path()), ns="aa", created=stamp),
        ingress("a", rule("a.example.com", path()), ns="aa", created=stamp),
    ]
    slices = [
        doc
        for ns in ("aa", "zz")
        for doc in (service(ns=ns), endpoint_slice("web", "10.0.0.1", ns=ns))
    ]
    result = run(*docs, *slices)
    [route] = routes(result)
    assert route.origin == "Ingress aa/a"
    assert sorted(p.object for p in result.problems) == ["Ingress aa/b", "Ingress zz/a"]


def test_ingress_with_timestamp_is_older_than_one_without() -> None:
    result = run(
        ingress("a", rule("a.example.com", path())),
        ingress("b", rule("a.example.com", path()), created="2030-01-01T00:00:00Z"),
        *WEB,
    )
    assert [r.origin for r in routes(result)] == ["Ingress default/b"]


def test_same_host_and_path_with_another_type_is_no_conflict() -> None:
    doc = ingress("web", rule("a.example.com", path("/x", path_type="Exact"), path("/x")))
    result = run(doc, *WEB)
    assert [r.path_type for r in routes(result)] == ["Exact", "Prefix"]
    assert result.problems == ()


def test_default_backend_oldest_wins() -> None:
    default = {"service": {"name": "web", "port": {"number": 80}}}
    other = {"service": {"name": "api", "port": {"number": 80}}}
    result = run(
        ingress("b", default=default, created="2024-01-01T00:00:00Z"),
        ingress("a", default=other, created="2024-06-01T00:00:00Z"),
        *WEB,
        service("api"),
        endpoint_slice("api", "10.0.0.5"),
    )
    http = listener(result, "ingress-http").http
    assert http is not None
    assert http.default_backend == "default.web.80"
    assert routes(result) == ()
    [problem] = result.problems
    assert problem.object == "Ingress default/a"
    assert problem.field == "spec.defaultBackend"
    assert "Ingress default/b" in problem.reason


def test_host_without_paths_goes_to_the_default_backend() -> None:
    default = {"service": {"name": "web", "port": {"number": 80}}}
    result = run(ingress("web", {"host": "bare.example.com"}, default=default), *WEB)
    [route] = routes(result)
    assert (route.host, route.path, route.backend) == ("bare.example.com", "/", "default.web.80")


# --- annotations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("rewrite-target", "/$1", "rewrite_target", "/$1"),
        ("app-root", "/app", "app_root", "/app"),
        (
            "whitelist-source-range",
            "10.0.0.0/8, 192.168.0.1",
            "allow",
            ("10.0.0.0/8", "192.168.0.1/32"),
        ),
        ("allowlist-source-range", "fd00::/8", "allow", ("fd00::/8",)),
        ("proxy-body-size", "1m", "max_body", 1 << 20),
        ("proxy-body-size", "0", "max_body", None),
        ("proxy-connect-timeout", "5", "connect_timeout", 5.0),
        ("proxy-read-timeout", "2m", "read_timeout", 120.0),
        ("force-ssl-redirect", "true", "ssl_redirect", True),
    ],
)
@pytest.mark.parametrize("prefix", ["meshgate.io/", "nginx.ingress.kubernetes.io/"])
def test_annotation_sets_the_route_field(
    prefix: str, name: str, value: str, attribute: str, expected: object
) -> None:
    doc = web_ingress(annotations={prefix + name: value})
    result = run(doc, *WEB)
    assert result.problems == ()
    [route] = routes(result)
    assert getattr(route, attribute) == expected


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("meshgate.io/ssl-redirect", "yes", 'expected "true" or "false"'),
        ("nginx.ingress.kubernetes.io/proxy-read-timeout", "soon", "expected seconds"),
        ("nginx.ingress.kubernetes.io/proxy-body-size", "lots", "expected a size"),
        ("meshgate.io/whitelist-source-range", "10.0.0.0/33", "not an address or CIDR range"),
        ("meshgate.io/app-root", "app", "starts with '/'"),
        ("nginx.ingress.kubernetes.io/backend-protocol", "GRPC", "GRPC is not supported"),
        ("meshgate.io/proxy-ssl-verify", "maybe", 'expected "on" or "off"'),
        ("meshgate.io/whitelist-source-rnage", "10.0.0.0/8", "did you mean"),
        ("meshgate.io/ssl-passthrough", True, "quote it"),
    ],
)
def test_invalid_annotation_skips_the_ingress_and_names_the_annotation(
    key: str, value: object, reason: str
) -> None:
    bad = web_ingress("bad", host="bad.example.com", annotations={key: value})
    result = run(bad, web_ingress("good", host="good.example.com"), *WEB)
    assert [r.origin for r in routes(result)] == ["Ingress default/good"]
    [problem] = result.problems
    assert problem.object == "Ingress default/bad"
    assert problem.field == f"metadata.annotations[{key}]"
    assert reason in problem.reason
    assert "(Ingress skipped)" in problem.reason


def test_unknown_nginx_annotation_is_a_note_and_other_prefixes_are_ignored() -> None:
    doc = web_ingress(
        annotations={
            "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers x;",
            "cert-manager.io/cluster-issuer": "letsencrypt",
            "meshgate.io/proxy-body-size": "8k",
        }
    )
    result = run(doc, *WEB)
    assert result.problems == ()
    [route] = routes(result)
    assert route.max_body == 8192
    [note] = [n for n in result.notes if "annotation" in n]
    assert note == (
        "Ingress default/web: annotation nginx.ingress.kubernetes.io/configuration-snippet "
        "ignored, not supported by meshgate"
    )


def test_backend_protocol_https_re_originates_tls_with_the_service_name() -> None:
    doc = web_ingress(annotations={"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"})
    result = run(doc, *WEB)
    [route] = routes(result)
    assert route.backend == "default.web.80.https"
    assert backend(result, route.backend).tls == UpstreamTls(sni="web.default.svc")


def test_proxy_ssl_name_and_verify_off() -> None:
    doc = web_ingress(
        annotations={
            "meshgate.io/backend-protocol": "https",
            "nginx.ingress.kubernetes.io/proxy-ssl-name": "internal.example.com",
            "nginx.ingress.kubernetes.io/proxy-ssl-verify": "off",
        }
    )
    result = run(doc, *WEB)
    [route] = routes(result)
    assert backend(result, route.backend).tls == UpstreamTls(
        sni="internal.example.com", insecure_skip_verify=True
    )


def test_proxy_ssl_annotations_without_https_backend_are_noted() -> None:
    doc = web_ingress(annotations={"meshgate.io/proxy-ssl-name": "x.example.com"})
    result = run(doc, *WEB)
    assert backend(result, "default.web.80").tls is None
    assert any("proxy-ssl-name ignored" in n for n in result.notes)


def test_one_service_port_over_http_and_https_is_two_backends() -> None:
    plain = web_ingress("plain", host="a.example.com")
    tls = web_ingress(
        "tls", host="b.example.com", annotations={"meshgate.io/backend-protocol": "HTTPS"}
    )
    verified_elsewhere = web_ingress(
        "other",
        host="c.example.com",
        annotations={
            "meshgate.io/backend-protocol": "HTTPS",
            "meshgate.io/proxy-ssl-name": "c.example.com",
        },
    )
    result = run(plain, tls, verified_elsewhere, *WEB)
    assert {r.host: r.backend for r in routes(result)} == {
        "c.example.com": "default.web.80.https",
        "a.example.com": "default.web.80",
        "b.example.com": "default.web.80.https2",
    }
    assert backend(result, "default.web.80.https2").tls == UpstreamTls(sni="web.default.svc")


def test_proxy_ssl_secret_ca_is_the_trust_anchor_of_the_backend() -> None:
    ca = secret(
        "backend-ca",
        ns="certs",
        type_="Opaque",
        raw={"ca.crt": base64.b64encode(CERT_PEM.encode()).decode()},
    )
    doc = web_ingress(
        annotations={
            "meshgate.io/backend-protocol": "HTTPS",
            "meshgate.io/proxy-ssl-secret": "certs/backend-ca",
        }
    )
    result = run(doc, ca, *WEB)
    [route] = routes(result)
    assert backend(result, route.backend).tls == UpstreamTls(
        sni="web.default.svc", ca="secret:certs/backend-ca", ca_pem=CERT_PEM
    )
    assert result.problems == ()


def test_proxy_ssl_secret_that_is_missing_skips_the_ingress() -> None:
    doc = web_ingress(
        annotations={
            "meshgate.io/backend-protocol": "HTTPS",
            "nginx.ingress.kubernetes.io/proxy-ssl-secret": "certs/nope",
        }
    )
    result = run(doc, *WEB)
    assert routes(result) == ()
    [problem] = result.problems
    assert problem.field == "metadata.annotations[nginx.ingress.kubernetes.io/proxy-ssl-secret]"
    assert "Secret certs/nope not found" in problem.reason


# --- TLS ----------------------------------------------------------------------------------


def test_tls_secret_becomes_an_inline_certificate_for_its_hosts() -> None:
    doc = web_ingress(tls=[{"hosts": ["web.example.com"], "secretName": "web-tls"}])
    result = run(doc, secret(), *WEB)
    assert result.problems == ()
    https = listener(result, "ingress-https")
    [entry] = https.tls.certificates
    assert entry.hosts == ("web.example.com",)
    assert entry.certificate == Certificate(
        cert="secret:default/web-tls",
        key="secret:default/web-tls",
        cert_pem=CERT_PEM,
        key_pem=KEY_PEM,
    )
    assert listener(result, "ingress-http").tls.certificates == ()


def test_tls_secret_string_data_is_accepted() -> None:
    doc = web_ingress(tls=[{"hosts": ["web.example.com"], "secretName": "web-tls"}])
    plain = secret() | {"data": None, "stringData": {"tls.crt": CERT_PEM, "tls.key": KEY_PEM}}
    [entry] = listener(run(doc, plain, *WEB), "ingress-https").tls.certificates
    assert entry.certificate.cert_pem == CERT_PEM


def test_one_certificate_for_the_hosts_of_several_ingresses_is_listed_once() -> None:
    a = web_ingress(
        "a", host="a.example.com", tls=[{"hosts": ["a.example.com"], "secretName": "web-tls"}]
    )
    b = web_ingress(
        "b", host="b.example.com", tls=[{"hosts": ["b.example.com"], "secretName": "web-tls"}]
    )
    [entry] = listener(run(a, b, secret(), *WEB), "ingress-https").tls.certificates
    assert entry.hosts == ("a.example.com", "b.example.com")


@pytest.mark.parametrize(
    ("secrets", "reason"),
    [
        ((), "Secret default/web-tls not found"),
        ((secret(type_="Opaque"),), "has type 'Opaque', not kubernetes.io/tls"),
        ((secret(raw={"tls.crt": "%%%not base64", "tls.key": "eA=="}),), "not valid base64"),
        ((secret(crt="just text"),), "tls.crt does not look like PEM"),
        (
            (secret(raw={"tls.crt": base64.b64encode(CERT_PEM.encode()).decode()}),),
            "has no tls.key",
        ),
        ((secret(ns="other"),), "Secret default/web-tls not found"),
    ],
)
def test_unusable_tls_secret_is_a_problem_and_the_host_gets_the_default_certificate(
    secrets: tuple[Doc, ...], reason: str
) -> None:
    doc = web_ingress(tls=[{"hosts": ["web.example.com"], "secretName": "web-tls"}])
    result = run(doc, *secrets, *WEB)
    [route] = routes(result)  # still served, over HTTPS with the default certificate
    assert route.ssl_redirect
    assert listener(result, "ingress-https").tls.certificates == ()
    [problem] = result.problems
    assert problem.field == "spec.tls[0].secretName"
    assert reason in problem.reason
    assert "web.example.com get the default certificate" in problem.reason
    assert CERT_PEM not in problem.reason


def test_a_hosts_certificate_from_an_older_ingress_wins() -> None:
    older = web_ingress(
        "older",
        tls=[{"hosts": ["web.example.com"], "secretName": "a"}],
        created="2020-01-01T00:00:00Z",
    )
    newer = ingress(
        "newer",
        rule("web.example.com", path("/other")),
        tls=[{"hosts": ["web.example.com"], "secretName": "b"}],
        created="2021-01-01T00:00:00Z",
    )
    result = run(older, newer, secret("a"), secret("b"), *WEB)
    [entry] = listener(result, "ingress-https").tls.certificates
    assert entry.certificate.cert == "secret:default/a"
    [problem] = result.problems
    assert problem.object == "Ingress default/newer"
    assert "Ingress default/older" in problem.reason


def test_tls_entry_without_hosts_is_a_problem() -> None:
    doc = web_ingress(tls=[{"secretName": "web-tls"}])
    result = run(doc, secret(), *WEB)
    [problem] = result.problems
    assert problem.field == "spec.tls[0].hosts"


# --- ssl redirect -------------------------------------------------------------------------


def _redirects(result: Translation) -> dict[str | None, bool]:
    return {r.host: r.ssl_redirect for r in routes(result)}


def test_ssl_redirect_is_on_for_hosts_a_tls_entry_covers() -> None:
    doc = ingress(
        "web",
        rule("secure.example.com", path()),
        rule("plain.example.com", path()),
        rule("a.wild.example.com", path()),
        rule(None, path("/x")),
        tls=[{"hosts": ["secure.example.com", "*.wild.example.com"]}],  # default certificate
    )
    assert _redirects(run(doc, *WEB)) == {
        "secure.example.com": True,
        "plain.example.com": False,
        "a.wild.example.com": True,
        None: False,
    }


def test_ssl_redirect_false_turns_the_default_off() -> None:
    doc = web_ingress(
        tls=[{"hosts": ["web.example.com"]}],
        annotations={"nginx.ingress.kubernetes.io/ssl-redirect": "false"},
    )
    assert _redirects(run(doc, *WEB)) == {"web.example.com": False}


def test_ssl_redirect_true_without_tls_does_nothing_but_force_does() -> None:
    plain = web_ingress(
        "plain", host="a.example.com", annotations={"meshgate.io/ssl-redirect": "true"}
    )
    forced = web_ingress(
        "forced", host="b.example.com", annotations={"meshgate.io/force-ssl-redirect": "true"}
    )
    assert _redirects(run(plain, forced, *WEB)) == {"a.example.com": False, "b.example.com": True}


def test_without_an_https_listener_only_forced_redirects_remain() -> None:
    options = IngressOptions(https_listen="off")
    covered = web_ingress("a", host="a.example.com", tls=[{"hosts": ["a.example.com"]}])
    forced = web_ingress(
        "b", host="b.example.com", annotations={"meshgate.io/force-ssl-redirect": "true"}
    )
    result = run(covered, forced, *WEB, options=options)
    [http] = result.config.listeners
    assert http.http is not None
    assert {r.host: r.ssl_redirect for r in http.http.routes} == {
        "a.example.com": False,
        "b.example.com": True,
    }


# --- ssl passthrough ----------------------------------------------------------------------


def test_ssl_passthrough_routes_the_hosts_by_sni_and_adds_no_http_routes() -> None:
    doc = ingress(
        "db",
        rule("db.example.com", path("/admin", svc="api"), path("/", svc="web", port=443)),
        annotations={
            "nginx.ingress.kubernetes.io/ssl-passthrough": "true",
            "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
        },
    )
    result = run(
        doc,
        service(ports=(("https", 443),)),
        endpoint_slice("web", "10.0.0.1", ports=(("https", 8443),)),
        service("api"),
    )
    assert routes(result) == ()
    https = listener(result, "ingress-https")
    [route] = https.routes
    assert (route.sni, route.mode, route.backend) == (
        ("db.example.com",),
        "passthrough",
        "default.web.443",
    )
    assert backend(result, "default.web.443").tls is None  # the client's TLS goes through
    assert listener(result, "ingress-http").routes == ()
    assert any("other paths are not used" in n for n in result.notes)


def test_ssl_passthrough_default_backend_serves_only_its_hosts_without_paths() -> None:
    doc = ingress(
        "db",
        {"host": "db.example.com"},
        annotations={"meshgate.io/ssl-passthrough": "true"},
        default={"service": {"name": "web", "port": {"number": 80}}},
    )
    result = run(doc, *WEB)
    [route] = listener(result, "ingress-https").routes
    assert (route.sni, route.backend) == (("db.example.com",), "default.web.80")
    http = listener(result, "ingress-http").http
    assert http is not None
    assert http.default_backend is None


def test_ssl_passthrough_without_hosts_is_a_problem() -> None:
    doc = ingress("db", rule(None, path()), annotations={"meshgate.io/ssl-passthrough": "true"})
    result = run(doc, *WEB)
    assert listener(result, "ingress-https").routes == ()
    fields = [p.field for p in result.problems]
    assert fields == ["spec.rules[0].host", "spec.rules"]


def test_ssl_passthrough_with_https_off_is_noted() -> None:
    doc = web_ingress(annotations={"meshgate.io/ssl-passthrough": "true"})
    result = run(doc, *WEB, options=IngressOptions(https_listen="off"))
    assert [x.name for x in result.config.listeners] == ["ingress-http"]
    assert result.config.backends == ()
    assert any("the https listener is off" in n for n in result.notes)


# --- listen options -----------------------------------------------------------------------


def test_http_off_leaves_only_the_https_listener() -> None:
    result = run(web_ingress(), *WEB, options=IngressOptions(http_listen="off"))
    assert [x.name for x in result.config.listeners] == ["ingress-https"]


def test_ipv6_and_fixed_listen_addresses() -> None:
    options = IngressOptions(http_listen="127.0.0.1:8080", https_listen="[::1]:8443")
    result = run(web_ingress(), *WEB, options=options)
    http, https = result.config.listeners
    assert (http.address, http.port) == ("127.0.0.1", 8080)
    assert (https.address, https.port) == ("::1", 8443)
    assert http.http is not None
    assert http.http.https_port == 8443  # redirects go to the https listener


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto:80", ("auto", 80)),
        ("AUTO:443", ("auto", 443)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::]:8443", ("::", 8443)),
        ("off", None),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["80", "web:80", "auto:99999", "::1:80", ""])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_listen(text)


def test_invalid_listen_option_is_a_problem_and_that_listener_is_left_out() -> None:
    result = run(web_ingress(), *WEB, options=IngressOptions(http_listen="auto:http"))
    assert [x.name for x in result.config.listeners] == ["ingress-https"]
    [problem] = result.problems
    assert (problem.source, problem.field) == ("ingress options", "http_listen")


def test_http_and_https_on_the_same_socket_is_a_problem() -> None:
    options = IngressOptions(http_listen="0.0.0.0:8080", https_listen="127.0.0.1:8080")
    result = run(web_ingress(), *WEB, options=options)
    assert [x.name for x in result.config.listeners] == ["ingress-http"]
    [problem] = result.problems
    assert problem.field == "https_listen"


# --- invalid and ignored objects ----------------------------------------------------------


def test_invalid_objects_are_skipped_and_the_valid_ones_load() -> None:
    result = run(
        ["not", "an", "object"],
        {"apiVersion": "v1", "metadata": {"name": "x"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {}},
        ingress("broken") | {"spec": {"ingressClassName": "meshgate", "rules": "all of them"}},
        web_ingress(),
        *WEB,
    )
    assert [r.origin for r in routes(result)] == ["Ingress default/web"]
    assert [(p.line, p.object, p.field) for p in result.problems] == [
        (1, "", ""),
        (11, "", "kind"),
        (21, "Service", "metadata.name"),
        (31, "Ingress default/broken", "spec.rules"),
    ]
    assert "expected a list" in result.problems[3].reason


def test_unsupported_kinds_are_noted() -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    result = run(deployment, web_ingress(), *WEB)
    assert result.problems == ()
    assert "Deployment web: ignored, meshgate does not use Deployment objects" in result.notes


def test_an_object_defined_twice_is_a_problem_and_the_first_is_used() -> None:
    result = run(web_ingress(), service(), service(ports=(("http", 81),)), WEB[1])
    [problem] = result.problems
    assert problem.object == "Service default/web"
    assert "defined again (first at test.yaml:11)" in problem.reason
    assert [r.backend for r in routes(result)] == ["default.web.80"]


def test_invalid_service_is_reported_once_and_its_paths_are_skipped() -> None:
    bad = service() | {"spec": {"ports": [{"name": "http", "port": "eighty"}]}}
    result = run(web_ingress(), bad)
    assert routes(result) == ()
    assert [(p.object, p.field) for p in result.problems] == [
        ("Service default/web", "spec.ports[0].port"),
        ("Ingress default/web", "spec.rules[0].http.paths[0].backend.service.name"),
    ]
    assert "is invalid" in result.problems[1].reason


def test_invalid_slice_address_is_skipped() -> None:
    result = run(web_ingress(), service(), endpoint_slice("web", "10.0.0.1", "not an address"))
    assert [e.host for e in backend(result, "default.web.80").endpoints] == ["10.0.0.1"]
    [problem] = result.problems
    assert problem.object == "EndpointSlice default/web-abcde"
    assert problem.field == "endpoints[1].addresses[0]"


def test_null_address_and_null_tls_host_are_problems_not_names() -> None:
    piece = endpoint_slice("web", "10.0.0.1")
    piece["endpoints"].append({"addresses": [None]})
    doc = web_ingress(tls=[{"hosts": [None, "web.example.com"], "secretName": "web-tls"}])
    result = run(doc, service(), piece, secret())
    assert [e.host for e in backend(result, "default.web.80").endpoints] == ["10.0.0.1"]
    [entry] = listener(result, "ingress-https").tls.certificates
    assert entry.hosts == ("web.example.com",)
    assert sorted(p.field for p in result.problems) == [
        "endpoints[1].addresses[0]",
        "spec.tls[0].hosts[0]",
    ]


def test_invalid_route_value_is_a_problem_for_that_path() -> None:
    # pydantic's own checks (here: a path with a space) land on the path.
    doc = ingress("web", rule("a.example.com", path("/a b"), path("/ok")))
    result = run(doc, *WEB)
    assert [r.path for r in routes(result)] == ["/ok"]
    [problem] = result.problems
    assert problem.field == "spec.rules[0].http.paths[0]"


def test_no_objects_still_listens_and_routes_nothing() -> None:
    # Ports stay open while Ingresses come and go: unknown hosts get 404.
    result = run()
    assert [x.name for x in result.config.listeners] == ["ingress-http", "ingress-https"]
    assert routes(result) == ()
    assert result.problems == ()


def test_a_served_ingress_that_yields_nothing_still_opens_the_listeners() -> None:
    # Listeners stay put while an Ingress is being fixed: no rebinding churn.
    result = run(ingress("web", rule("a.example.com", path(svc="gone"))))
    assert [x.name for x in result.config.listeners] == ["ingress-http", "ingress-https"]
    assert len(result.problems) == 1


# --- no input makes translation raise -----------------------------------------------------

_EVERYTHING = (
    ingress(
        "web",
        rule("a.example.com", path(), path("/x", port="http", path_type="Exact")),
        rule(None, path("/(.*)", svc="ext", path_type="ImplementationSpecific")),
        annotations={
            "meshgate.io/rewrite-target": "/$1",
            "meshgate.io/backend-protocol": "HTTPS",
            "meshgate.io/proxy-ssl-secret": "default/ca",
            "nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8",
        },
        tls=[{"hosts": ["a.example.com"], "secretName": "web-tls"}, {"hosts": ["b.example.com"]}],
        default={"service": {"name": "web", "port": {"number": 80}}},
        created="2024-01-01T00:00:00Z",
    ),
    ingress(
        "pass",
        rule("b.example.com", path()),
        annotations={"meshgate.io/ssl-passthrough": "true"},
        cls=None,
    ),
    ingress_class("meshgate", "meshgate.io/ingress-controller", default=True),
    service(),
    service("ext", ports=(), type_="ExternalName", external="ext.example.com"),
    endpoint_slice("web", "10.0.0.1", "fd00::1", not_ready=("10.0.0.2",)),
    secret(),
    secret("ca", type_="Opaque", raw={"ca.crt": base64.b64encode(CERT_PEM.encode()).decode()}),
)

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 70000) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _locations(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _locations(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _locations(item, (*prefix, index))
    return found


def _replace(doc: Any, at: tuple[Any, ...], value: Any) -> Any:
    if not at:
        return value
    target = doc
    for key in at[:-1]:
        target = target[key]
    target[at[-1]] = value
    return doc


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_damage_to_the_objects_is_reported_never_raised(data: st.DataObject) -> None:
    docs: list[Any] = copy.deepcopy(list(_EVERYTHING))
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(docs) - 1))
        at = data.draw(st.sampled_from(_locations(docs[index])))
        docs[index] = _replace(docs[index], at, data.draw(_JSON))
    run(*docs)


def test_the_undamaged_objects_are_all_used() -> None:
    result = run(*_EVERYTHING)
    assert result.problems == ()
    assert len(routes(result)) == 3
    assert len(listener(result, "ingress-https").routes) == 1
