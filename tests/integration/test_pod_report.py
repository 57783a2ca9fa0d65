"""A proxy run by the operator reports its address into its own Pod's
`meshgate.io/mesh-ip` annotation (downward API name, its service account)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.harness import free_port, running, wait_for
from tests.kube.fake_apiserver import FakeApiServer


def test_proxy_writes_its_address_into_its_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeApiServer(namespaces=("default", "meshgate-system")) as api:
        api.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "mg-default-web-1", "namespace": "meshgate-system"},
                "spec": {"containers": [{"name": "meshgate", "image": "meshgate"}]},
            }
        )
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        monkeypatch.setenv("POD_NAME", "mg-default-web-1")
        monkeypatch.setenv("POD_NAMESPACE", "meshgate-system")
        args = ["--ingress", f"tcp:{free_port()}:127.0.0.1:9", "--bind", "127.0.0.2"]
        with running([*args, "--kubeconfig", str(kubeconfig)], tmp_path):

            def annotation() -> str | None:
                pod = api.get_object("Pod", "meshgate-system", "mg-default-web-1") or {}
                value = (pod.get("metadata", {}).get("annotations") or {}).get(
                    "meshgate.io/mesh-ip"
                )
                return str(value) if value is not None else None

            wait_for(lambda: annotation() == "127.0.0.2", "the pod annotation")
