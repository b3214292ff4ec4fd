"""The documentation site builds with ``mkdocs build --strict``.

So a docstring that griffe cannot parse, an API page pointing at a name that no longer exists,
or a broken link between pages fails CI instead of the next docs deploy.
"""

import os
import sys
from pathlib import Path

import pytest

import background

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("mkdocs", reason="docs extras not installed (pip install -e '.[docs]')")
pytest.importorskip("mkdocstrings_handlers.python",
                    reason="docs extras not installed (pip install -e '.[docs]')")


def _build(workdir):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return ([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(workdir / "site")],
            {"cwd": ROOT, "env": env})


# (a job of tests/background.py: started early, it runs while the in-process tests do)
BUILD_JOB = background.job("docs: mkdocs build --strict", _build, timeout=120)


@pytest.mark.background(BUILD_JOB)
def test_docs_build_strict(tmp_path):
    done = background.result(BUILD_JOB, tmp_path)
    proc, site = done.proc, done.workdir / "site"
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (site / "index.html").exists()
    assert (site / "api" / "engines" / "index.html").exists()
