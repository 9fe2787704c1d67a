"""The code passes the project's linter (ruff, configured in pyproject.toml: pycodestyle, pyflakes and import
sorting). ruff is part of the environment tools/setup_env.sh sets up, so a missing ruff fails the test."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff():
    """The ruff of this environment (next to its python), else one on PATH."""
    return shutil.which('ruff', path=os.path.dirname(sys.executable)) or shutil.which('ruff')


def test_ruff_finds_nothing():
    ruff = _ruff()
    assert ruff is not None, 'ruff is not installed: tools/setup_env.sh installs it (or pip install ruff)'
    proc = subprocess.run([ruff, 'check', '--no-cache', '.'], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
