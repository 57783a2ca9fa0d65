"""Fixtures of the stress suite (`make stress`, `pytest -m stress`).

- `figures`: what a test measured; printed at the end of the run and
  appended as one JSON line per test to $STRESS_REPORT (default
  `.stress-report.jsonl` in the repository root), with the outcome, so the
  numbers can be quoted later. Recorded as they are measured, so a failing
  test still reports what it saw.
- `procs`: every process a test starts (meshgate, backends, clients, wrk)
  registered here is stopped at teardown, also when the test fails.

Every test module marks itself `stress`; the default `pytest` run leaves
them out (pyproject.toml addopts).
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterator
from typing import Protocol, TypeVar

import pytest

from tests.stress.kit import Figures, report_path

_FIGURES = pytest.StashKey[list[tuple[str, Figures]]]()
_OUTCOME = pytest.StashKey[str]()


class Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


class Procs:
    """Things with `stop()`, stopped last-started first."""

    def __init__(self) -> None:
        self._items: list[Stoppable] = []

    def add(self, item: S) -> S:
        self._items.append(item)
        return item

    def stop_all(self) -> None:
        errors = []
        for item in reversed(self._items):
            try:
                item.stop()
            except Exception as exc:  # stop the rest all the same
                errors.append(repr(exc))
        self._items.clear()
        if errors:
            raise RuntimeError(f"stopping test processes: {errors}")


@pytest.fixture
def procs() -> Iterator[Procs]:
    registry = Procs()
    try:
        yield registry
    finally:
        registry.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        item.stash[_OUTCOME] = outcome
    return report


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    figs = Figures(request.node.nodeid)
    yield figs
    outcome = request.node.stash.get(_OUTCOME, "unknown")
    line = figs.line(outcome)
    path = report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(line) + "\n")
    request.config.stash.setdefault(_FIGURES, []).append((outcome, figs))
    print(f"\n{figs.test} ({outcome})\n{figs.text()}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    recorded = terminalreporter.config.stash.get(_FIGURES, [])
    if not recorded:
        return
    terminalreporter.section("stress figures")
    for outcome, figs in recorded:
        terminalreporter.write_line(f"{figs.test} ({outcome})")
        for text in figs.text().splitlines():
            terminalreporter.write_line(text)
    terminalreporter.write_line(f"(appended to {os.path.relpath(report_path())})")
