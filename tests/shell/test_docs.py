"""The documentation site builds with ``mkdocs build --strict``.

So a docstring that griffe cannot parse, an API page pointing at a name that no longer exists,
or a broken link between pages fails CI instead of the next docs deploy.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("mkdocs", reason="docs extras not installed (pip install -e '.[docs]')")
pytest.importorskip("mkdocstrings_handlers.python",
                    reason="docs extras not installed (pip install -e '.[docs]')")


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (site / "index.html").exists()
    assert (site / "api" / "engines" / "index.html").exists()
