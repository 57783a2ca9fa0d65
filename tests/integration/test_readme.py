"""The README's examples work as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"


def test_readme_yaml_example_is_a_valid_config(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no YAML example"
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(block)
        result = subprocess.run(
            [sys.executable, "-m", "meshgate", "check", "-c", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_readme_error_example_matches_the_real_output() -> None:
    text = README.read_text()
    shown = re.search(r"\$ meshgate check --ingress tcp:99999:web:80\n(.*?)```", text, re.S)
    assert shown is not None
    result = subprocess.run(
        [sys.executable, "-m", "meshgate", "check", "--ingress", "tcp:99999:web:80"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == shown.group(1).strip()
