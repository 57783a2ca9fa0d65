"""`meshgate run --watch`: Ingresses served live from an API server.

The same objects as test_ingress.py's `--manifests` tests (its builders are
reused), written into `FakeApiServer` while meshgate runs: changes apply
without a restart, also when the server drops watches and compacts its
history. Backends are real HTTP servers (`HttpBackend`) that say who answered.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Meshgate, free_port, wait_for
from tests.integration.http_backend import HttpBackend
from tests.integration.test_ingress import (
    NS,
    Doc,
    endpoint_slice,
    fetch,
    host_rule,
    ingress,
    quiet,
    service,
    serving,
)
from tests.kube.fake_apiserver import FakeApiServer


@dataclass
class Watched:
    api: FakeApiServer
    mg: Meshgate
    http: int
    one: HttpBackend
    two: HttpBackend

    def answer(self, host: str) -> tuple[int, str]:
        """(status, the backend that answered; "" when meshgate answered itself)."""
        reply = fetch(self.http, "/", host=host)
        return reply.status, reply.service

    def wait_answer(self, host: str, status: int, backend: str, timeout: float = 15.0) -> None:
        wait_for(
            lambda: self.answer(host) == (status, backend),
            f"{host} to answer {status} from {backend or 'meshgate'}",
            timeout,
        )

    def put_app(self, name: str, host: str, backend: HttpBackend, cls: str = "meshgate") -> None:
        """A Service, its EndpointSlice at `backend`, and an Ingress for `host`."""
        self.api.put(service(name))
        self.api.put(endpoint_slice(name, backend.host, backend.port))
        self.api.put(ingress(name, host_rule(host, name), cls=cls))


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    tmp = tmp_path_factory.mktemp("watch")
    one, two = quiet(HttpBackend("one", "127.0.0.2")), quiet(HttpBackend("two", "127.0.0.3"))
    with contextlib.ExitStack() as stack:
        stack.enter_context(serving(one, two))
        api = stack.enter_context(FakeApiServer(max_watch_seconds=5))
        kubeconfig = api.write_kubeconfig(tmp / "kubeconfig")
        http = free_port()
        mg = Meshgate(
            [
                "--watch",
                "--kubeconfig",
                str(kubeconfig),
                "--http-listen",
                f"127.0.0.1:{http}",
                "--https-listen",
                "off",
            ],
            tmp,
        )
        stack.callback(mg.stop)
        mg.wait_ready()
        print(f"meshgate log: {mg.log_path}")
        yield Watched(api, mg, http, one, two)


def test_ingress_is_served_and_follows_its_endpointslice(watched: Watched) -> None:
    w = watched
    w.put_app("web", "web.example", w.one)
    w.wait_answer("web.example", 200, "one")
    pid = w.mg.proc.pid
    w.api.put(endpoint_slice("web", w.two.host, w.two.port))
    w.wait_answer("web.example", 200, "two")
    assert w.mg.proc.poll() is None
    assert w.mg.proc.pid == pid  # no restart: a reload


def test_served_ingress_gets_the_address_in_its_status(watched: Watched) -> None:
    # What external-dns and cert-manager read: where the Ingress is served.
    w = watched
    w.put_app("published", "published.example", w.one)
    w.put_app("other", "other.example", w.one, cls="nginx")

    def lb(name: str) -> list[dict[str, str]]:
        obj = w.api.get_object("Ingress", NS, name) or {}
        return list(((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [])

    wait_for(lambda: lb("published") == [{"ip": "127.0.0.1"}], "the Ingress status")
    assert lb("other") == []  # not ours: left alone


def test_deleted_ingress_answers_404(watched: Watched) -> None:
    w = watched
    w.put_app("gone", "gone.example", w.one)
    w.wait_answer("gone.example", 200, "one")
    w.api.delete("Ingress", NS, "gone")
    w.wait_answer("gone.example", 404, "")


def test_ingress_of_another_class_is_ignored(watched: Watched) -> None:
    w = watched
    w.put_app("theirs", "theirs.example", w.one, cls="nginx")
    # Served later than the other class's Ingress, so that one has been seen too.
    w.put_app("ours", "ours.example", w.two)
    w.wait_answer("ours.example", 200, "two")
    assert w.answer("theirs.example") == (404, "")
    # Moved to our class: served.
    w.api.put(ingress("theirs", host_rule("theirs.example", "theirs")))
    w.wait_answer("theirs.example", 200, "one")


def test_converges_through_dropped_watches_and_compaction(watched: Watched) -> None:
    w = watched
    backends = (w.one, w.two)
    stop, tick = threading.Event(), threading.Event()

    def disrupt() -> None:
        while not stop.wait(0.3):
            w.api.drop_watches()
            w.api.compact()
            tick.set()

    # Each step: some changes, then a disruption before the next.
    steps: list[list[Doc]] = []
    for i in range(6):
        name = f"churn-{i}"
        app = endpoint_slice(name, w.one.host, w.one.port)
        steps.append([service(name), app, ingress(name, host_rule(f"{name}.example", name))])
    for i in range(6):  # every other one moves to the second backend
        name = f"churn-{i}"
        backend = backends[i % 2]
        steps.append([endpoint_slice(name, backend.host, backend.port)])
    thread = threading.Thread(target=disrupt, daemon=True)
    thread.start()
    try:
        for docs in steps:
            for doc in docs:
                w.api.put(doc)
            tick.clear()
            assert tick.wait(5)
        for i in (4, 5):  # and the last two go
            w.api.delete("Ingress", NS, f"churn-{i}")
            tick.clear()
            assert tick.wait(5)
    finally:
        stop.set()
        thread.join(5)

    for i in range(4):
        w.wait_answer(f"churn-{i}.example", 200, backends[i % 2].server.name, 30)
    for i in (4, 5):
        w.wait_answer(f"churn-{i}.example", 404, "", 30)
    assert w.mg.proc.poll() is None


def test_kubeconfig_path_is_required_to_exist(tmp_path: Path) -> None:
    """A kubeconfig that is not there: a clear error, exit code 2, no traceback."""
    mg = Meshgate(
        [
            "--watch",
            "--kubeconfig",
            str(tmp_path / "missing"),
            "--http-listen",
            f"127.0.0.1:{free_port()}",
            "--https-listen",
            "off",
        ],
        tmp_path,
    )
    try:
        assert mg.wait_exit() == 2
        assert "cannot use Kubernetes" in mg.log()
        assert "Traceback" not in mg.log()
    finally:
        mg.stop()


def test_watch_services_serves_annotated_services_as_listeners(tmp_path: Path) -> None:
    from tests.integration.harness import port_open

    tcp = free_port()
    annotated: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "db",
            "namespace": "default",
            "annotations": {"netmaker.io/ingress": "enabled"},
        },
        "spec": {"ports": [{"port": tcp, "protocol": "TCP"}]},
    }
    with FakeApiServer() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        args = ["--watch", "--watch-services", "--kubeconfig", str(kubeconfig), "--bind"]
        args += ["127.0.0.1", "--http-listen", "off", "--https-listen", "off"]
        mg = Meshgate(args, tmp_path)
        try:
            mg.wait_ready()
            api.put(annotated)
            wait_for(lambda: port_open(tcp), "the Service's listener")
            [backend] = [b for b in mg.json("/config")["backends"] if b["name"].startswith("svc.")]
            assert backend["endpoints"] == [f"db.default.svc.cluster.local:{tcp}"]
            annotated["metadata"]["annotations"] = {}
            api.put(annotated)
            wait_for(lambda: not port_open(tcp), "the listener to close")
        finally:
            mg.stop()
