"""Ingress status written by `run --watch`: our class only, only when it differs."""

from __future__ import annotations

from typing import Any

from meshgate.config.manifests import IngressOptions, KubeObject, translate
from meshgate.kube.client import INGRESS, KubeClient
from meshgate.kube.ingress_status import load_balancer, publish
from tests.kube.fake_apiserver import FakeApiServer


def ingress(name: str, cls: str | None, legacy: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if legacy:
        meta["annotations"] = {"kubernetes.io/ingress.class": legacy}
    spec: dict[str, Any] = {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}
    if cls:
        spec["ingressClassName"] = cls
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}


def test_the_translation_names_the_ingresses_of_our_class() -> None:
    # Class name, legacy annotation, or no class while ours is the default one.
    default_class = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {
            "name": "meshgate",
            "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"},
        },
        "spec": {"controller": "meshgate.io/ingress-controller"},
    }
    docs = [
        ingress("a", "meshgate"),
        ingress("b", None, legacy="meshgate"),
        ingress("c", "nginx"),
        ingress("d", None),
        default_class,
    ]
    served = translate([KubeObject(d, "test") for d in docs], IngressOptions()).served
    assert served == {("default", "a"), ("default", "b"), ("default", "d")}


def test_addresses_become_ip_or_hostname_entries() -> None:
    assert load_balancer(["100.64.0.5", "fd00::5", "gw.mesh"]) == [
        {"ip": "100.64.0.5"},
        {"ip": "fd00::5"},
        {"hostname": "gw.mesh"},
    ]


async def test_status_written_for_our_ingresses_once(
    fake_api: FakeApiServer, fake_client: KubeClient
) -> None:
    for obj in (ingress("ours", "meshgate"), ingress("theirs", "nginx")):
        fake_api.put(obj)
    items, _ = await fake_client.list(INGRESS, "default")
    ours_only = {("default", "ours")}
    assert await publish(fake_client, items, ours_only, ["100.64.0.5"]) == 1
    ours = fake_api.get_object("ingresses", "default", "ours")
    theirs = fake_api.get_object("ingresses", "default", "theirs")
    assert ours is not None
    assert theirs is not None
    assert ours["status"]["loadBalancer"]["ingress"] == [{"ip": "100.64.0.5"}]
    assert not (theirs.get("status") or {}).get("loadBalancer", {}).get("ingress")
    items, _ = await fake_client.list(INGRESS, "default")
    assert await publish(fake_client, items, ours_only, ["100.64.0.5"]) == 0  # unchanged
    assert await publish(fake_client, items, ours_only, ["100.64.0.6"]) == 1  # moved
