"""CI executes the example notebooks (jupytext percent scripts) end to end.

In the small-steps setting (``GFLOW_EXAMPLE_SMOKE=1``: few SVGD steps, short NUTS runs), so the
whole file runs in well under a minute; run a script by hand for the full setting.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, tmp_path):
    # figures go to the temporary folder, never into examples/ (GFLOW_FIGURES_DIR)
    env = dict(os.environ, MPLBACKEND="Agg", GFLOW_EXAMPLE_SMOKE="1",
               GFLOW_FIGURES_DIR=str(tmp_path))
    before = {p: p.stat().st_mtime_ns for p in path.parent.glob("*.png")}
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip()
    assert list(tmp_path.glob("*.png")), "the example wrote no figure"
    assert {p: p.stat().st_mtime_ns for p in path.parent.glob("*.png")} == before
