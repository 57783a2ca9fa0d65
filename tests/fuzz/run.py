"""`make fuzz`: run each harness for a while on its corpus, then merge the corpus.

    .venv/bin/python -m tests.fuzz.run [--seconds 60] [--artifacts DIR] [HARNESS ...]

For each harness (default: all of `contracts.CHECKS`), libFuzzer starts from
tests/fuzz/corpus/<harness>/, runs for `--seconds`, and writes inputs with new
coverage into that directory. Then the corpus is minimised with `-merge=1`:
the `seed-*` files (from make_seeds.py: real inputs) and `find-*` files (fixed
findings, kept as regression inputs) stay by name, and of the rest only inputs
that add coverage beyond them are kept, named by their SHA-1. An input that
breaks a contract stops its harness; libFuzzer saves it as
`<artifacts>/<harness>-crash-<sha1>` and the run exits 1 after the other
harnesses. Such an input is a finding: reduce it (`-minimize_crash=1`), put it
under tests/fuzz/findings/<harness>/ and describe it in
tests/unit/test_fuzz_corpus.py (see README, Fuzzing).

A dictionary tests/fuzz/dicts/<harness>.dict, if present, is passed with
`-dict=`. The summary gives executions per second and the coverage libFuzzer
reached (`cov`: edges of the instrumented Python code; `ft`: features).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz.contracts import MAX_INPUT

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "tests" / "fuzz"
HARNESSES = (
    "tls_hello",
    "proxy_protocol",
    "http_request",
    "http_response",
    "dns",
    "config",
    "rules",
    "manifests",
    "annotations",
)
DICTIONARIES = {"http_request": "http", "http_response": "http", "config": "yaml"}
DICTIONARIES |= {"manifests": "yaml", "annotations": "annotations"}


@dataclass
class Result:
    harness: str
    status: int
    runs: str = "?"
    exec_per_sec: str = "?"
    cov: str = "?"
    ft: str = "?"
    corpus: int = 0


def _stat(output: str, name: str) -> str:
    found = re.findall(rf"stat::{name}:\s*(\d+)", output)
    return found[-1] if found else "?"


def _command(harness: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"tests.fuzz.fuzz_{harness}", *args]


def fuzz(harness: str, seconds: int, artifacts: Path) -> Result:
    corpus = FUZZ / "corpus" / harness
    corpus.mkdir(parents=True, exist_ok=True)
    flags = [
        f"-max_total_time={seconds}",
        f"-max_len={MAX_INPUT}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/{harness}-",
    ]
    dictionary = DICTIONARIES.get(harness)
    if dictionary is not None:
        flags.append(f"-dict={FUZZ / 'dicts' / dictionary}.dict")
    print(f"== fuzz {harness} for {seconds}s", flush=True)
    run = subprocess.run(
        _command(harness, str(corpus), *flags),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        check=False,
    )
    log = artifacts / f"{harness}.log"
    log.write_text(run.stdout)
    tail = [line for line in run.stdout.splitlines() if line.startswith("#")][-1:]
    print("\n".join(tail) or run.stdout[-2000:], flush=True)
    if run.returncode:
        print(run.stdout[-4000:], flush=True)
        print(f"!! {harness}: a finding (exit {run.returncode}); log in {log}", flush=True)
    result = Result(harness, run.returncode)
    result.runs = _stat(run.stdout, "number_of_executed_units")
    result.exec_per_sec = _stat(run.stdout, "average_exec_per_sec")
    coverage = re.findall(r"cov: (\d+) ft: (\d+)", run.stdout)
    if coverage:
        result.cov, result.ft = coverage[-1]
    return result


def merge(harness: str, artifacts: Path) -> int:
    """Keep the seeds and fixed findings, plus the other inputs that add coverage."""
    corpus = FUZZ / "corpus" / harness
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{harness}-") as scratch:
        merged = Path(scratch) / "merged"
        merged.mkdir()
        for kept in [*corpus.glob("seed-*"), *corpus.glob("find-*")]:
            shutil.copy2(kept, merged / kept.name)
        run = subprocess.run(
            _command(
                harness,
                "-merge=1",
                "-use_counters=0",  # new edges only, not new hit counts: a small corpus
                f"-max_len={MAX_INPUT}",
                f"-artifact_prefix={artifacts}/{harness}-merge-",
                str(merged),
                str(corpus),
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            check=False,
        )
        (artifacts / f"{harness}.merge.log").write_text(run.stdout)
        if run.returncode:
            print(f"!! {harness}: merge failed, corpus left as it was", flush=True)
            return len(list(corpus.iterdir()))
        for old in corpus.iterdir():
            old.unlink()
        for new in merged.iterdir():
            shutil.copy2(new, corpus / new.name)
    return len(list(corpus.iterdir()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="per harness (default 60)")
    parser.add_argument("--artifacts", type=Path, default=ROOT / ".fuzz-artifacts")
    parser.add_argument("--no-merge", action="store_true", help="keep every new input")
    parser.add_argument("harnesses", nargs="*", metavar="HARNESS", help=", ".join(HARNESSES))
    args = parser.parse_args()
    unknown = set(args.harnesses) - set(HARNESSES)
    if unknown:
        parser.error(f"unknown harness {', '.join(sorted(unknown))}; one of {', '.join(HARNESSES)}")
    artifacts: Path = args.artifacts.resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    results = []
    for harness in args.harnesses or HARNESSES:
        result = fuzz(harness, args.seconds, artifacts)
        corpus = FUZZ / "corpus" / harness
        result.corpus = len(list(corpus.iterdir()))
        if not args.no_merge:
            result.corpus = merge(harness, artifacts)
        results.append(result)
    print(f"\n{'harness':16} {'status':>6} {'runs':>10} {'exec/s':>8} {'cov':>6} {'ft':>7} corpus")
    for r in results:
        status = "ok" if r.status == 0 else "FOUND"
        print(
            f"{r.harness:16} {status:>6} {r.runs:>10} {r.exec_per_sec:>8} "
            f"{r.cov:>6} {r.ft:>7} {r.corpus}"
        )
    return 1 if any(r.status for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
