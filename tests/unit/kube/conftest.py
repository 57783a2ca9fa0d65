"""A fake API server and a client of it, for tests of code that calls Kubernetes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from meshgate.kube.client import KubeClient
from tests.kube.fake_apiserver import FakeApiServer


@pytest.fixture
def fake_api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
async def fake_client(fake_api: FakeApiServer, tmp_path: Path) -> AsyncIterator[KubeClient]:
    kube = KubeClient.from_config(str(fake_api.write_kubeconfig(tmp_path / "config")))
    yield kube
    await kube.close()
