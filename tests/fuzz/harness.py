"""The one way every harness runs: instrument meshgate, then hand libFuzzer a contract check.

`atheris.instrument_imports()` must wrap the first import of the code under
test, or libFuzzer sees no coverage and mutates blind; the contracts module
imports every parser, so it is imported here, inside the block, and nowhere
before. Pure-Python dependencies that do the parsing (dnslib, PyYAML) are
instrumented too where a harness asks; httptools and pydantic-core are
compiled, so atheris cannot see inside them.

Each `fuzz_*.py` beside this file calls `run` with its name in
`contracts.CHECKS`; libFuzzer's own flags (a corpus directory,
`-max_total_time=60`, ...) come from the command line, see `make fuzz`.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

import atheris


def run(name: str, instrument: Sequence[str] = ()) -> None:
    with atheris.instrument_imports(include=["meshgate", "tests", *instrument]):
        from tests.fuzz import contracts
    # libFuzzer's -merge=1 (and -fork) run argv[0] again through the shell: make
    # that this interpreter and module, not the bare .py file, which is no program.
    command = f"{shlex.quote(sys.executable)} -m tests.fuzz.fuzz_{name}"
    atheris.Setup([command, *sys.argv[1:]], contracts.CHECKS[name])
    atheris.Fuzz()
