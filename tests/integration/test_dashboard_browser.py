"""The dashboard in a real browser: Debian's chromium, driven by Playwright,
against a real `meshgate run` serving traffic, with an endpoint that refuses
connections (and gets ejected) and a request smuggling attempt (400).

The browser is the system one (`apt-get install chromium`); Playwright's own
browser download is never used (`playwright install` is never run). A
screenshot is saved to $MESHGATE_ARTIFACTS (default tests/artifacts/), also
when the test fails. Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from tests.integration.harness import WAIT, Meshgate, free_port, running
from tests.integration.http_backend import HttpBackend

CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)

# Without the background-networking flags Chromium keeps trying to reach
# Google services, which on a machine without internet only costs time.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

ARTIFACTS = Path(os.environ.get("MESHGATE_ARTIFACTS") or Path(__file__).parents[1] / "artifacts")

API_ROUTE = "app.example/api(/|$)(.*)"


def http_get(port: int, path: str = "/", host: str | None = None) -> int:
    headers = {"Host": host} if host else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as err:
        err.close()
        return int(err.code)


def smuggle(port: int) -> bytes:
    """A request with both Content-Length and Transfer-Encoding: meshgate answers 400."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(
            b"POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        return conn.recv(4096)


def refused_connect(port: int) -> None:
    """One client connection to a listener whose only endpoint refuses."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.settimeout(5)
        assert conn.recv(1) == b""  # meshgate closes it: no upstream


class Traffic:
    """Requests in a background thread, so rates and latencies are not zero."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.failures: list[str] = []  # checked when the block ends
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                statuses = [
                    http_get(self.port, "/api/v1/users", host="app.example"),
                    http_get(self.port, "/"),
                ]
            except OSError as exc:
                self.failures.append(repr(exc))
                return
            if statuses != [200, 200]:
                self.failures.append(f"statuses {statuses}")

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=WAIT)
        assert not self.failures, self.failures


@pytest.fixture
def page() -> Iterator[Page]:
    assert CHROMIUM is not None
    # Every expectation polls up to the harness' deadline (Playwright: 5 s).
    expect.set_options(timeout=WAIT * 1000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(WAIT * 1000)
            yield page
        finally:
            browser.close()


def save(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def number(page: Page, selector: str) -> float:
    return float(page.locator(selector).inner_text().replace("/s", "") or 0)


@dataclass(frozen=True, slots=True)
class Ports:
    web: int  # http listener
    relay: int  # tcp listener relaying to `web`
    broken: int  # tcp listener whose one endpoint refuses
    closed: int  # that endpoint: nothing listens there


def test_dashboard_shows_live_traffic_health_and_errors(tmp_path: Path, page: Page) -> None:
    ports = Ports(web=free_port(), relay=free_port(), broken=free_port(), closed=free_port())
    problems: list[str] = []

    def console(msg: ConsoleMessage) -> None:
        # Headless chromium asks for /favicon.ico whatever the page links to.
        if msg.type == "error" and "favicon.ico" not in str(msg.location.get("url")):
            problems.append(f"console: {msg.text}")

    page.on("console", console)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    with HttpBackend("api") as api:
        config = tmp_path / "meshgate.yaml"
        config.write_text(
            f"""
listeners:
  - name: web
    address: 127.0.0.1
    port: {ports.web}
    protocol: http
    http:
      routes:
        - host: app.example
          path: /api(/|$)(.*)
          path_type: Regex
          rewrite_target: /$2
          backend: api
      default_backend: hello
  - name: relay
    address: 127.0.0.1
    port: {ports.relay}
    protocol: tcp
    backend: web-via-tcp
  - name: broken
    address: 127.0.0.1
    port: {ports.broken}
    protocol: tcp
    backend: dead
backends:
  - {{name: api, endpoints: ["127.0.0.1:{api.port}"]}}
  - {{name: hello, builtin: hello}}
  - {{name: web-via-tcp, endpoints: ["127.0.0.1:{ports.web}"]}}
  - {{name: dead, endpoints: ["127.0.0.1:{ports.closed}"]}}
drain_timeout: 1s
"""
        )
        with running(["-c", str(config)], tmp_path) as mg:
            try:
                check_dashboard(mg, page, ports)
                assert not problems, problems
            except BaseException:
                save(page, "dashboard-failed.png")
                raise
            # The admin server goes away: the page says so and keeps what it had.
            mg.stop()
            expect(page.locator("#link")).to_have_text("disconnected")
            expect(page.locator("#disconnected")).to_be_visible()
            expect(page.locator('#listener-rows tr[data-listener="web"]')).to_be_visible()


def check_dashboard(mg: Meshgate, page: Page, ports: Ports) -> None:
    web, relay, broken, closed = ports.web, ports.relay, ports.broken, ports.closed
    for _ in range(5):
        assert http_get(web, "/api/v1/users", host="app.example") == 200
        assert http_get(relay, "/") == 200
    assert smuggle(web).startswith(b"HTTP/1.1 400 ")

    page.goto(f"http://127.0.0.1:{mg.admin_port}/")
    expect(page.locator("#link")).to_have_text("live")

    # Listeners, with their protocol and state.
    for name, protocol in [("web", "http"), ("relay", "tcp"), ("broken", "tcp")]:
        row = page.locator(f'#listener-rows tr[data-listener="{name}"]')
        expect(row).to_contain_text(protocol)
        expect(row).to_contain_text("serving")
    # Routes down to backends and endpoints.
    api_route = page.locator(f'#route-tree tr[data-route="{API_ROUTE}"]')
    expect(api_route).to_contain_text("rewrite /$2")
    expect(api_route.locator("[data-state=healthy]")).to_have_count(1)
    expect(page.locator('#route-tree tr[data-route="default"]')).to_contain_text("built-in hello")

    # Counters update: more traffic, a higher connection count on the page.
    total = '#listener-rows tr[data-listener="web"] [data-field="total"]'
    before = number(page, total)
    for _ in range(3):
        http_get(web, "/")
    page.wait_for_function(
        "([selector, before]) => Number(document.querySelector(selector).textContent) > before",
        arg=[total, before],
    )

    # Rates and latency come from the difference between polls.
    with Traffic(web):
        rate = '#listener-rows tr[data-listener="web"] [data-field="req-rate"]'
        page.wait_for_function(
            "(selector) => parseFloat(document.querySelector(selector).textContent) > 0",
            arg=rate,
        )
        route_card = page.locator(f'#route-charts .card[data-route="{API_ROUTE}"]')
        expect(route_card).to_contain_text("p99")
        page.wait_for_function(
            "(selector) => /[0-9] (µs|ms|s)/.test(document.querySelector(selector).textContent)",
            arg=f'#route-charts .card[data-route="{API_ROUTE}"] [data-chart=latency] .legend',
        )
        assert page.locator("canvas.chart").count() >= 6

        # Three refused connects in a row eject the endpoint (for 10 s).
        for _ in range(3):
            refused_connect(broken)
        endpoint = page.locator(f'#route-tree [data-endpoint="127.0.0.1:{closed}"]')
        expect(endpoint).to_have_attribute("data-state", "ejected")

        # The errors list: the refused connects (WARNING) and the 400 (INFO).
        errors = page.locator("#error-rows")
        expect(errors.locator('tr[data-event="no upstream"]').first).to_contain_text("refused")
        expect(errors.locator('tr[data-event="http request rejected"]')).to_contain_text(
            "smuggling"
        )
        save(page, "dashboard.png")

    # The page's quantile arithmetic: Prometheus' histogram_quantile().
    before_doc = {"le": [0.1, 0.2], "cumulative": [5, 5], "count": 5}
    after_doc = {"le": [0.1, 0.2], "cumulative": [15, 25], "count": 25}
    p50, p99 = page.evaluate(
        "([a, b]) => [0.5, 0.99].map((q) => meshgateDashboard.quantile(q, a, b))",
        [after_doc, before_doc],
    )
    assert p50 == pytest.approx(0.1)
    assert p99 == pytest.approx(0.198)


def test_a_token_protected_dashboard_asks_for_the_token(tmp_path: Path, page: Page) -> None:
    token = tmp_path / "admin-token"
    token.write_text("dashboard-token-0123456789")
    port = free_port()
    args = ["--ingress", f"tcp:{port}:127.0.0.1:9", "--admin-token-file", str(token)]
    mg = Meshgate(args, tmp_path).wait_ready()
    try:
        page.goto(f"http://127.0.0.1:{mg.admin_port}/")
        expect(page.locator("#token-form")).to_be_visible()
        expect(page.locator("#link")).to_have_text("locked")
        page.fill("#token-input", "not-the-token-0123456789")
        page.click("#token-form button")
        expect(page.locator("#token-detail")).to_contain_text("refused")
        page.fill("#token-input", "dashboard-token-0123456789")
        page.click("#token-form button")
        expect(page.locator("#link")).to_have_text("live")
        expect(page.locator("#token-form")).to_be_hidden()
        expect(page.locator("#listener-rows")).to_contain_text(f"127.0.0.1:{port}")
    finally:
        mg.stop()
