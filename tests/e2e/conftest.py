"""Fixtures for the end-to-end tests: one WireGuard lab per test module.

The lab needs root, wireguard-go and wg; without them the tests skip, and
tests/conftest.py turns that skip into a failure when CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.netlab import Lab, missing_requirements, open_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = missing_requirements()
    if reason is not None:
        pytest.skip(reason)
    with open_lab(tmp_path_factory.mktemp("lab")) as built:
        yield built


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    """The module's lab; processes a test starts are stopped when it ends."""
    with lab.scope():
        yield lab
