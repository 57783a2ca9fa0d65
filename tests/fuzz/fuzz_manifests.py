"""Fuzz Kubernetes manifests: YAML documents -> objects -> Config (translate).

Input: one manifest file (multi-document YAML or JSON). See `contracts.check_manifests`
for what is checked; run with `make fuzz`.
"""

from __future__ import annotations

from tests.fuzz.harness import run

if __name__ == "__main__":
    run("manifests", ["yaml"])
