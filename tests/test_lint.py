"""The code passes the project's linter (ruff, configured in pyproject.toml: pycodestyle and pyflakes)."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff():
    """The ruff of this environment (next to its python), else one on PATH."""
    return shutil.which('ruff', path=os.path.dirname(sys.executable)) or shutil.which('ruff')


@pytest.mark.skipif(_ruff() is None, reason='ruff is not installed (tools/setup_env.sh installs it)')
def test_ruff_finds_nothing():
    proc = subprocess.run([_ruff(), 'check', '--no-cache', '.'], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
