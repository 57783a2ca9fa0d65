"""Fuzz YAML configuration files (meshgate.config.files.parse_yaml).

Input: the file's bytes (UTF-8; other bytes stop at load_file before parsing). See
`contracts.check_config` for what is checked; run with `make fuzz`.
"""

from __future__ import annotations

from tests.fuzz.harness import run

if __name__ == "__main__":
    run("config", ["yaml"])
