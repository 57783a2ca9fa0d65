"""Fuzz the nexd-style rule syntax (meshgate.config.rules: Rule.parse, rules_to_config).

Input: lines: the first is --bind, the others --ingress and --egress rules alternately.
See `contracts.check_rules` for what is checked; run with `make fuzz`.
"""

from __future__ import annotations

from tests.fuzz.harness import run

if __name__ == "__main__":
    run("rules")
