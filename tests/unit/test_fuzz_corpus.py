"""Replay the fuzz corpus through the fuzzers' contract checks, without atheris.

Every file under tests/fuzz/corpus/<harness>/ (the seeds, and what `make
fuzz` kept for new coverage) must pass `contracts.CHECKS[harness]`: a valid
result, or the documented rejection with a reason. So an input the fuzzer once
found interesting stays a regression test, in `make test`.

Inputs that still break a contract (findings not fixed yet) live apart, in
tests/fuzz/findings/<harness>/, because libFuzzer stops at the first failing
input of its corpus. Each has an entry in FINDINGS saying what is wrong, and
is replayed as a strict xfail: when the fix lands, the test XPASSes and fails,
as a reminder to move the file into the corpus as `find-<name>` (the merge after
`make fuzz` keeps `seed-*` and `find-*` files by name) and drop the entry.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.contracts import CHECKS, MAX_INPUT

FUZZ = Path(__file__).parents[1] / "fuzz"
CORPUS = FUZZ / "corpus"
FOUND = FUZZ / "findings"

# harness/file -> the bug it shows (file and line at fault), until fixed.
FINDINGS: dict[str, str] = {}


def _files(root: Path) -> list[Path]:
    return sorted(path for path in root.glob("*/*") if path.is_file())


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


CORPUS_FILES = _files(CORPUS)
FINDING_FILES = _files(FOUND)


def test_every_harness_has_a_corpus() -> None:
    assert {path.parent.name for path in CORPUS_FILES} == set(CHECKS)


def test_corpus_stays_small() -> None:
    big = [_id(path) for path in CORPUS_FILES if path.stat().st_size > MAX_INPUT]
    assert not big, f"over {MAX_INPUT} bytes (run make fuzz, it merges): {big}"
    assert len(CORPUS_FILES) <= 1000, "minimise the corpus: see README, Fuzzing"


def test_every_finding_is_described() -> None:
    assert sorted(_id(path) for path in FINDING_FILES) == sorted(FINDINGS)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=_id)
def test_corpus_input_keeps_the_contract(path: Path) -> None:
    CHECKS[path.parent.name](path.read_bytes())


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            path, marks=pytest.mark.xfail(strict=True, reason=FINDINGS.get(_id(path), "?"))
        )
        for path in FINDING_FILES
    ]
    or [None],  # none known: one trivial pass, not an empty (skipped) parametrization
    ids=lambda path: "none" if path is None else _id(path),
)
def test_known_finding_still_breaks_the_contract(path: Path | None) -> None:
    if path is not None:
        CHECKS[path.parent.name](path.read_bytes())
