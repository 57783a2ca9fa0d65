"""Fuzz Ingress annotations (meshgate.config.annotations.parse_annotations).

Input: key=value lines; a line without '=' is a non-string value, as YAML true or 8
would be. See `contracts.check_annotations` for what is checked; run with `make fuzz`.
"""

from __future__ import annotations

from tests.fuzz.harness import run

if __name__ == "__main__":
    run("annotations")
