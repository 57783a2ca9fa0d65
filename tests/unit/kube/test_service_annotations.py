"""Which Services are ours, and how: the Netmaker guide's Services, the aliases, every rejection."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from meshgate.kube.service_annotations import (
    ANNOTATIONS,
    DEFAULT_SECRET_KEY,
    DEFAULT_SECRET_NAME,
    EgressIntent,
    IngressIntent,
    PortSpec,
    Rejection,
    markdown_table,
    parse_service,
    service_rejections,
)
from tests.unit.kube.netmaker_guide import GUIDE_EXAMPLE_3

# The Netmaker operator guide's Services, as written there.
GUIDE_SERVICE = """
apiVersion: v1
kind: Service
metadata:
  name: my-k8s-service
  namespace: default
  annotations:
    netmaker.io/ingress: "enabled"
    netmaker.io/ingress-dns-name: "my-app.netmaker.internal"
spec:
  ports:
  - port: 8080
    targetPort: 8080
    protocol: TCP
  selector:
    app: my-app
  type: ClusterIP
"""

GUIDE_EXAMPLE_1 = """
apiVersion: v1
kind: Service
metadata:
  name: my-api-service
  namespace: default
  annotations:
    netmaker.io/ingress: "enabled"
    netmaker.io/ingress-dns-name: "api.k8s.netmaker.internal"
spec:
  ports:
  - name: http
    port: 80
    targetPort: 8080
    protocol: TCP
  selector:
    app: my-api
  type: ClusterIP
"""

GUIDE_EXAMPLE_2 = """
apiVersion: v1
kind: Service
metadata:
  name: my-db-service
  namespace: default
  annotations:
    netmaker.io/ingress: "enabled"
spec:
  ports:
  - name: postgres
    port: 5432
    targetPort: 5432
    protocol: TCP
  selector:
    app: postgres
  type: ClusterIP
"""


# The guide's commented-out options, uncommented.
GUIDE_OPTIONS = """
apiVersion: v1
kind: Service
metadata:
  name: my-k8s-service
  namespace: default
  annotations:
    netmaker.io/ingress: "enabled"
    netmaker.io/ingress-bind-ip: "10.0.0.50"
    netmaker.io/ingress-dns-name: "my-app.netmaker.internal"
    netmaker.io/secret-name: "custom-netclient-token"
    netmaker.io/secret-key: "token"
spec:
  ports:
  - port: 8080
    targetPort: 8080
    protocol: TCP
  selector:
    app: my-app
"""

# The Netmaker egress guide's Services.
EGRESS_BY_IP = """
apiVersion: v1
kind: Service
metadata:
  name: netmaker-api-egress
  annotations:
    netmaker.io/egress: "enabled"
    netmaker.io/egress-target-ip: "100.93.135.2"
spec:
  ports:
  - port: 80
    targetPort: 8080  # Port on Netmaker device
"""

EGRESS_BY_DNS = """
apiVersion: v1
kind: Service
metadata:
  name: netmaker-app
  namespace: default
  annotations:
    netmaker.io/egress: "enabled"
    netmaker.io/egress-target-dns: "api.netmaker.internal"
    netmaker.io/egress-target-port: "443"
spec:
  ports:
  - name: http
    port: 80
    targetPort: 80
    protocol: TCP
  - name: https
    port: 443
    targetPort: 443
    protocol: TCP
  type: ClusterIP
"""


def load(text: str) -> dict[str, Any]:
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def service(
    annotations: dict[str, Any] | None = None,
    ports: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations or {}},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}] if ports is None else ports, **spec},
    }


def ingress(svc: dict[str, Any]) -> IngressIntent:
    intent = parse_service(svc)
    assert isinstance(intent, IngressIntent), intent
    return intent


def egress(svc: dict[str, Any]) -> EgressIntent:
    intent = parse_service(svc)
    assert isinstance(intent, EgressIntent), intent
    return intent


def rejected(svc: dict[str, Any]) -> Rejection:
    found = parse_service(svc)
    assert isinstance(found, Rejection), found
    assert service_rejections(svc)[0] == found
    return found


# --- the Netmaker guide -------------------------------------------------------


def test_guide_service() -> None:
    assert ingress(load(GUIDE_SERVICE)) == IngressIntent(
        bind="auto",
        dns_name="my-app.netmaker.internal",
        proxy_class=None,
        secret_name="netclient-token",
        secret_key="token",
        ports=(PortSpec(name=None, protocol="TCP", port=8080, target_port=8080),),
    )


def test_guide_example_1_forwards_to_the_service_port_not_the_target_port() -> None:
    intent = ingress(load(GUIDE_EXAMPLE_1))
    assert intent.dns_name == "api.k8s.netmaker.internal"
    assert intent.ports == (PortSpec("http", "TCP", 80, 80),)


def test_guide_example_2_without_dns_name() -> None:
    intent = ingress(load(GUIDE_EXAMPLE_2))
    assert (intent.dns_name, intent.bind) == (None, "auto")
    assert intent.ports == (PortSpec("postgres", "TCP", 5432, 5432),)


def test_guide_example_3_multiple_ports() -> None:
    intent = ingress(load(GUIDE_EXAMPLE_3))
    assert intent.ports == (PortSpec("http", "TCP", 80, 80), PortSpec("https", "TCP", 443, 443))


def test_guide_options() -> None:
    intent = ingress(load(GUIDE_OPTIONS))
    assert intent.bind == "10.0.0.50"
    assert (intent.secret_name, intent.secret_key) == ("custom-netclient-token", "token")


def test_egress_guide_by_ip_uses_target_port_on_the_device() -> None:
    intent = egress(load(EGRESS_BY_IP))
    assert intent == EgressIntent(
        target="100.93.135.2",
        ports=(PortSpec(None, "TCP", 80, 8080),),
        proxy_class=None,
        secret_name=DEFAULT_SECRET_NAME,
        secret_key=DEFAULT_SECRET_KEY,
    )


def test_egress_guide_by_dns_ignores_other_netmaker_keys() -> None:
    intent = egress(load(EGRESS_BY_DNS))
    assert intent.target == "api.netmaker.internal"
    assert [p.target_port for p in intent.ports] == [80, 443]


def test_egress_with_a_selector_is_accepted() -> None:
    # The egress guide's Service keeps a selector (matching no Pod here).
    svc = load(EGRESS_BY_IP)
    svc["spec"]["selector"] = {"app": "netmaker-egress-proxy"}
    assert egress(svc).target == "100.93.135.2"


# --- not ours -----------------------------------------------------------------


@pytest.mark.parametrize(
    "annotations",
    [
        {},
        {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        {"meshgate.io/ingress": "disabled"},
        {"netmaker.io/ingress": "false"},
        {"meshgate.io/mesh-ip": "100.64.0.1"},
        # other operators' options on their own Services are theirs
        {"netmaker.io/ingress-dns-name": "x.netmaker.internal"},
        {"tailscale.com/hostname": "not a name!"},
        {"netmaker.io/something-new": "x"},
    ],
)
def test_not_ours(annotations: dict[str, str]) -> None:
    svc = service(annotations)
    assert parse_service(svc) is None
    assert service_rejections(svc) == ()


def test_other_load_balancer_classes_are_not_ours() -> None:
    assert parse_service(service(type="LoadBalancer", loadBalancerClass="tailscale")) is None
    assert parse_service(service(type="LoadBalancer")) is None


# --- switches and aliases -----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("meshgate.io/ingress", "enabled"),
        ("meshgate.io/ingress", "true"),
        ("meshgate.io/ingress", " Enabled "),
        ("netmaker.io/ingress", "enabled"),
        ("tailscale.com/expose", "true"),
    ],
)
def test_ingress_switches(key: str, value: str) -> None:
    assert ingress(service({key: value})).ports == (PortSpec(None, "TCP", 80, 80),)


def test_load_balancer_class_enables_ingress() -> None:
    svc = service(type="LoadBalancer", loadBalancerClass="meshgate.io/mesh")
    assert ingress(svc).bind == "auto"


@pytest.mark.parametrize(
    ("annotations", "target"),
    [
        ({"meshgate.io/egress": "enabled", "meshgate.io/egress-target-ip": "100.64.0.9"}, None),
        ({"meshgate.io/egress": "true", "meshgate.io/egress-target-dns": "db.mesh.internal"}, None),
        ({"netmaker.io/egress": "enabled", "netmaker.io/egress-target-ip": "100.64.0.9"}, None),
        # The Tailscale keys enable egress by themselves.
        ({"tailscale.com/tailnet-ip": "100.64.0.9"}, None),
        ({"tailscale.com/ts-tailnet-target-ip": "100.64.0.9"}, None),
        ({"tailscale.com/tailnet-fqdn": "db.tail1234.ts.net."}, "db.tail1234.ts.net"),
        ({"tailscale.com/tailnet-ip": "fd7a:115c:a1e0::0009"}, "fd7a:115c:a1e0::9"),
    ],
)
def test_egress_switches_and_targets(annotations: dict[str, str], target: str | None) -> None:
    expected = target or next(v for k, v in annotations.items() if "target" in k or "tailnet" in k)
    assert egress(service(annotations)).target == expected


def test_tailscale_egress_turned_off_explicitly() -> None:
    svc = service({"tailscale.com/tailnet-ip": "100.64.0.9", "meshgate.io/egress": "disabled"})
    assert parse_service(svc) is None


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("meshgate.io/ingress-dns-name", "App.Mesh.Internal.", "app.mesh.internal"),
        ("netmaker.io/ingress-dns-name", "app.netmaker.internal", "app.netmaker.internal"),
        ("tailscale.com/hostname", "my-app", "my-app"),
    ],
)
def test_dns_name_aliases(key: str, value: str, expected: str) -> None:
    assert ingress(service({"meshgate.io/ingress": "enabled", key: value})).dns_name == expected


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("meshgate.io/ingress-bind-ip", "100.64.0.5", "100.64.0.5"),
        ("netmaker.io/ingress-bind-ip", "fd00:0::5", "fd00::5"),
        ("meshgate.io/ingress-bind-ip", "auto", "auto"),
    ],
)
def test_bind_ip(key: str, value: str, expected: str) -> None:
    assert ingress(service({"meshgate.io/ingress": "enabled", key: value})).bind == expected


@pytest.mark.parametrize("prefix", ["meshgate.io/", "netmaker.io/"])
def test_secret_aliases(prefix: str) -> None:
    svc = service(
        {
            "meshgate.io/egress": "enabled",
            "meshgate.io/egress-target-ip": "100.64.0.9",
            prefix + "secret-name": "other-token",
            prefix + "secret-key": "join.token",
        }
    )
    intent = egress(svc)
    assert (intent.secret_name, intent.secret_key) == ("other-token", "join.token")


@pytest.mark.parametrize("key", ["meshgate.io/proxy-class", "tailscale.com/proxy-class"])
def test_proxy_class_aliases(key: str) -> None:
    assert ingress(service({"meshgate.io/ingress": "enabled", key: "nexodus"})).proxy_class == (
        "nexodus"
    )


def test_same_value_under_two_keys_is_fine() -> None:
    svc = service(
        {
            "meshgate.io/ingress": "enabled",
            "netmaker.io/ingress": "true",
            "meshgate.io/ingress-dns-name": "a.mesh.internal",
            "netmaker.io/ingress-dns-name": "A.mesh.internal",
        }
    )
    assert ingress(svc).dns_name == "a.mesh.internal"


# --- ports --------------------------------------------------------------------


def test_udp_and_tcp_on_one_port() -> None:
    ports = [
        {"name": "dns-udp", "port": 53, "targetPort": 5353, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "targetPort": 5353},
    ]
    intent = ingress(service({"meshgate.io/ingress": "enabled"}, ports))
    assert intent.ports == (PortSpec("dns-udp", "UDP", 53, 53), PortSpec("dns-tcp", "TCP", 53, 53))


def test_headless_ingress_connects_to_the_target_port() -> None:
    svc = service({"meshgate.io/ingress": "enabled"}, clusterIP="None")
    assert ingress(svc).ports == (PortSpec(None, "TCP", 80, 8080),)


def test_egress_named_target_port_falls_back_to_the_port() -> None:
    ports: list[dict[str, Any]] = [{"name": "web", "port": 80, "targetPort": "http"}, {"port": 81}]
    svc = service(
        {"meshgate.io/egress": "enabled", "meshgate.io/egress-target-ip": "10.9.0.1"}, ports
    )
    assert [(p.port, p.target_port) for p in egress(svc).ports] == [(80, 80), (81, 81)]


# --- rejections ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "field", "words"),
    [
        (
            {"netmaker.io/ingress": "yes"},
            "metadata.annotations[netmaker.io/ingress]",
            ['"enabled"', '"disabled"', "'yes'"],
        ),
        (
            {"meshgate.io/egress": "on", "meshgate.io/egress-target-ip": "10.9.0.1"},
            "metadata.annotations[meshgate.io/egress]",
            ['"enabled"', "'on'"],
        ),
        (
            {"tailscale.com/expose": "1"},
            "metadata.annotations[tailscale.com/expose]",
            ['"true"'],
        ),
        (
            {"meshgate.io/ingress": True},
            "metadata.annotations[meshgate.io/ingress]",
            ["strings", 'meshgate.io/ingress: "true"'],
        ),
        (
            {"meshgate.io/ingress": "enabled", "meshgate.io/egress": "enabled"},
            "metadata.annotations[meshgate.io/egress]",
            ["ingress and egress", "two Services"],
        ),
        (
            {"netmaker.io/ingress": "enabled", "tailscale.com/tailnet-ip": "100.64.0.9"},
            "metadata.annotations[tailscale.com/tailnet-ip]",
            ["ingress and egress"],
        ),
        (
            {"meshgate.io/ingress": "enabled", "netmaker.io/ingress-bind-ip": "10.0.0.500"},
            "metadata.annotations[netmaker.io/ingress-bind-ip]",
            ["IP address", "10.0.0.500"],
        ),
        (
            {"meshgate.io/ingress": "enabled", "meshgate.io/ingress-bind-ip": "netmaker"},
            "metadata.annotations[meshgate.io/ingress-bind-ip]",
            ["IP address"],
        ),
        (
            {"meshgate.io/ingress": "enabled", "meshgate.io/ingress-dns-name": "my_app..internal"},
            "metadata.annotations[meshgate.io/ingress-dns-name]",
            ["DNS name"],
        ),
        (
            {"meshgate.io/ingress": "enabled", "meshgate.io/ingress-dns-name": "*.mesh.internal"},
            "metadata.annotations[meshgate.io/ingress-dns-name]",
            ["DNS name"],
        ),
        (
            {"netmaker.io/egress": "enabled"},
            "metadata.annotations[netmaker.io/egress]",
            ["needs a target", "netmaker.io/egress-target-ip", "netmaker.io/egress-target-dns"],
        ),
        (
            {"netmaker.io/egress": "enabled", "netmaker.io/egress-target-ip": "db.internal"},
            "metadata.annotations[netmaker.io/egress-target-ip]",
            ["IP address"],
        ),
        (
            {"netmaker.io/egress": "enabled", "netmaker.io/egress-target-dns": "-bad-"},
            "metadata.annotations[netmaker.io/egress-target-dns]",
            ["DNS name"],
        ),
        (
            {
                "meshgate.io/egress": "enabled",
                "meshgate.io/egress-target-ip": "10.9.0.1",
                "meshgate.io/egress-target-dns": "db.mesh.internal",
            },
            "metadata.annotations[meshgate.io/egress-target-dns]",
            ["one egress target"],
        ),
        (
            {"meshgate.io/ingress": "enabled", "netmaker.io/secret-name": "Bad_Name"},
            "metadata.annotations[netmaker.io/secret-name]",
            ["Secret"],
        ),
        (
            {"meshgate.io/ingress": "enabled", "meshgate.io/secret-key": "a/b"},
            "metadata.annotations[meshgate.io/secret-key]",
            ["key"],
        ),
        (
            {"meshgate.io/ingress": "enabled", "meshgate.io/proxy-class": "Big Class"},
            "metadata.annotations[meshgate.io/proxy-class]",
            ["proxy class ConfigMap"],
        ),
        (
            {"meshgate.io/ingres": "enabled"},
            "metadata.annotations[meshgate.io/ingres]",
            ["did you mean meshgate.io/ingress?"],
        ),
        (
            {"meshgate.io/ingress-dns-name": "a.mesh.internal"},
            "metadata.annotations[meshgate.io/ingress-dns-name]",
            ["no effect", "meshgate.io/ingress"],
        ),
        (
            {
                "meshgate.io/egress": "enabled",
                "meshgate.io/egress-target-ip": "10.9.0.1",
                "meshgate.io/ingress-dns-name": "a.mesh.internal",
            },
            "metadata.annotations[meshgate.io/ingress-dns-name]",
            ["ingress Services only"],
        ),
        (
            {"meshgate.io/ingress": "enabled", "netmaker.io/egress-target-ip": "10.9.0.1"},
            "metadata.annotations[netmaker.io/egress-target-ip]",
            ["egress Services only"],
        ),
        (
            {
                "meshgate.io/ingress": "enabled",
                "meshgate.io/ingress-dns-name": "a.mesh.internal",
                "netmaker.io/ingress-dns-name": "b.mesh.internal",
            },
            "metadata.annotations[netmaker.io/ingress-dns-name]",
            ["contradicts meshgate.io/ingress-dns-name"],
        ),
    ],
)
def test_annotation_rejections(annotations: dict[str, Any], field: str, words: list[str]) -> None:
    found = rejected(service(annotations))
    assert found.field == field
    for word in words:
        assert word in found.reason
    assert found.message == f"{field}: {found.reason}"


def test_rejection_for_load_balancer_class_turned_off() -> None:
    svc = service(
        {"meshgate.io/ingress": "disabled"},
        type="LoadBalancer",
        loadBalancerClass="meshgate.io/mesh",
    )
    found = rejected(svc)
    assert found.field == "metadata.annotations[meshgate.io/ingress]"
    assert "loadBalancerClass" in found.reason


@pytest.mark.parametrize(
    ("ports", "field", "words"),
    [
        (None, "spec.ports", ["no ports"]),
        ([], "spec.ports", ["no ports"]),
        ([{"port": 9000, "protocol": "SCTP"}], "spec.ports[0].protocol", ["SCTP", "TCP and UDP"]),
        (
            [{"port": 80}, {"port": 9000, "protocol": "SCTP"}],
            "spec.ports[1].protocol",
            ["SCTP"],
        ),
        ([{"port": 80, "protocol": "QUIC"}], "spec.ports[0].protocol", ["TCP or UDP"]),
        ([{"port": 0}], "spec.ports[0].port", ["1-65535"]),
    ],
)
def test_port_rejections(ports: list[dict[str, Any]] | None, field: str, words: list[str]) -> None:
    svc = service({"meshgate.io/ingress": "enabled"}, [])
    if ports is None:
        del svc["spec"]["ports"]
    else:
        svc["spec"]["ports"] = ports
    found = rejected(svc)
    assert found.field == field
    for word in words:
        assert word in found.reason


def test_headless_ingress_with_a_named_target_port_is_rejected() -> None:
    ports = [{"port": 80, "targetPort": "http"}]
    found = rejected(service({"meshgate.io/ingress": "enabled"}, ports, clusterIP="None"))
    assert found.field == "spec.ports[0].targetPort"
    assert "headless" in found.reason


def test_dns_name_with_port_53_is_rejected() -> None:
    svc = service(
        {"meshgate.io/ingress": "enabled", "meshgate.io/ingress-dns-name": "ns.mesh.internal"},
        [{"port": 53, "protocol": "UDP"}],
    )
    found = rejected(svc)
    assert found.field == "metadata.annotations[meshgate.io/ingress-dns-name]"
    assert "port 53" in found.reason


def test_external_name_egress_is_rejected() -> None:
    # The Tailscale operator's egress Services are ExternalName.
    svc = service(
        {"tailscale.com/tailnet-fqdn": "db.tail1234.ts.net"},
        type="ExternalName",
        externalName="placeholder",
    )
    found = rejected(svc)
    assert found.field == "spec.type"
    assert "ClusterIP without a selector" in found.reason


def test_every_problem_is_listed() -> None:
    svc = service(
        {
            "meshgate.io/ingress": "enabled",
            "meshgate.io/ingress-bind-ip": "nope",
            "meshgate.io/ingress-dns-name": "bad name",
            "meshgate.io/typo": "x",
        },
        [{"port": 1, "protocol": "SCTP"}],
    )
    fields = [r.field for r in service_rejections(svc)]
    assert fields == [
        "metadata.annotations[meshgate.io/ingress-bind-ip]",
        "metadata.annotations[meshgate.io/ingress-dns-name]",
        "metadata.annotations[meshgate.io/typo]",
        "spec.ports[0].protocol",
    ]


@pytest.mark.parametrize(
    "svc",
    [
        "not a service",
        {"metadata": None, "spec": None},
        {"metadata": {"annotations": {"meshgate.io/ingress": "enabled"}}, "spec": {"ports": "80"}},
        {
            "metadata": {"annotations": {"meshgate.io/ingress": "enabled"}},
            "spec": {"ports": [None]},
        },
        {"metadata": {"annotations": {1: "x", "meshgate.io/ingress": "enabled"}}},
    ],
)
def test_malformed_input_never_raises(svc: Any) -> None:
    found = parse_service(svc)
    assert found is None or isinstance(found, Rejection)


# --- the documentation table --------------------------------------------------


def test_markdown_table_lists_every_key() -> None:
    table = markdown_table()
    for spec in ANNOTATIONS:
        for key in spec.keys:
            assert f"`{key}`" in table
    assert "`meshgate.io/mesh-ip`" in table
    lines = table.splitlines()
    assert lines[0].startswith("| Annotation | Aliases |")
    assert len(lines) == len(ANNOTATIONS) + 3
    assert all(line.count("|") == 5 for line in lines)
