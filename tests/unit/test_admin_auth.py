"""Who may read the admin API: a bearer token, or loopback only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from meshgate.admin import AdminServer, load_token
from tests.unit.test_admin import FakeState

TOKEN = "s3cret-token-0123456789"


@asynccontextmanager
async def serving(host: str, token: str | None) -> AsyncIterator[str]:
    server = AdminServer(host, 0, FakeState(), token)
    _, port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


async def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.text()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_a_token_guards_everything_but_probes_and_the_page(host: str) -> None:
    async with serving(host, TOKEN) as base:
        for path in ("/status", "/config", "/metrics", "/api/overview", "/api/errors"):
            status, headers, body = await get(base + path)
            assert status == 401, path
            assert headers["WWW-Authenticate"] == 'Bearer realm="meshgate"'
            assert "Bearer" in body
            assert (await get(base + path, "wrong-token-0123456789"))[0] == 401
            assert (await get(base + path, TOKEN))[0] == 200, path
        for path in ("/healthz", "/readyz", "/"):
            assert (await get(base + path))[0] == 200, path
        assert TOKEN not in (await get(base + "/config", TOKEN))[2]


async def test_without_a_token_loopback_answers_everything() -> None:
    async with serving("127.0.0.1", None) as base:
        for path in ("/status", "/config", "/metrics", "/api/overview"):
            assert (await get(base + path))[0] == 200, path


async def test_without_a_token_an_exposed_address_keeps_status_private() -> None:
    async with serving("0.0.0.0", None) as base:
        status, _, body = await get(base + "/status")
        assert status == 403
        assert "--admin-token-file" in body
        for path in ("/config", "/api/overview", "/api/stats", "/api/errors"):
            assert (await get(base + path))[0] == 403, path
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            assert (await get(base + path))[0] == 200, path


def test_load_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert load_token(str(path), env={}) == TOKEN
    assert load_token(None, env={"MESHGATE_ADMIN_TOKEN": TOKEN}) == TOKEN
    assert load_token(None, env={}) is None


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_text("short"), "at least 16"),
        (lambda p: p.write_text("has a space in the middle"), "without spaces"),
        (lambda p: None, "cannot read the admin token file"),
    ],
)
def test_load_token_refuses_weak_or_missing_tokens(
    tmp_path: Path, write: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "token"
    write(path)
    with pytest.raises(ValueError, match=message):
        load_token(str(path), env={})
