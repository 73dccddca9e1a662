"""The habits that keep the codebase in shape, run with the suite: lint, format, types of the public API.

Configured in pyproject.toml ([tool.ruff], [tool.mypy]); the ``test`` extra installs both tools.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "benchmarks", "docs"]


def _tool(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    if exe.is_file():
        return [str(exe)]
    if shutil.which(name):
        return [name]
    pytest.skip(f"{name} is not installed (pip install -e '.[test]')")


def test_ruff_lint():
    out = subprocess.run([*_tool("ruff"), "check", *PATHS], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format():
    out = subprocess.run([*_tool("ruff"), "format", "--check", *PATHS], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, "run `ruff format`:\n" + out.stdout + out.stderr


def test_mypy_public_api():
    out = subprocess.run([*_tool("mypy")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
