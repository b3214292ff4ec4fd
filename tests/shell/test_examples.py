"""CI executes the example notebooks (jupytext percent scripts) end to end.

In the small-steps setting (``GFLOW_EXAMPLE_SMOKE=1``: few SVGD steps, short NUTS runs), so the
whole file runs in well under a minute; run a script by hand for the full setting. Each script is
a child process started early on the worker of tests/background.py (it runs while the
in-process tests do); the test asserts on its outcome.
"""

import os
import sys
from pathlib import Path

import pytest

import background

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


def _figure_times(path):
    return {p: p.stat().st_mtime_ns for p in path.parent.glob("*.png")}


def _command(path):
    def command(workdir):
        # figures go to the temporary folder, never into examples/ (GFLOW_FIGURES_DIR); run's
        # own checks are off (NUMPYRO_GFLOW_DIAGNOSE=0): a few smoke-size steps would only make
        # them warn, tests/engines/test_diagnose.py tests them, and they cost 17-21 % of an
        # example's time (mirrored_dirichlet 82 -> 68 s, mixflow_banana 52 -> 41 s on one core)
        env = dict(os.environ, MPLBACKEND="Agg", GFLOW_EXAMPLE_SMOKE="1",
                   GFLOW_FIGURES_DIR=str(workdir), NUMPYRO_GFLOW_DIAGNOSE="0")
        return [sys.executable, str(path)], {"cwd": workdir, "env": env}
    return command


JOBS = {path: background.job(f"example {path.name}", _command(path), timeout=600,
                             before=lambda p=path: _figure_times(p),
                             after=lambda p=path: _figure_times(p))
        for path in EXAMPLES}


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.background(JOBS[p]))
                                  for p in EXAMPLES], ids=lambda p: p.name)
def test_example_runs(path, tmp_path):
    done = background.result(JOBS[path], tmp_path)
    proc = done.proc
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip()
    assert list(done.workdir.glob("*.png")), "the example wrote no figure"
    assert done.after == done.before     # nothing in examples/ was written
