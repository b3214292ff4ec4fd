"""Issue 19: a first call compiles a handful of XLA programs, not hundreds of op-by-op ones.

In a fresh process (what a user's first call sees: nothing compiled yet), every engine's first
``run`` + ``get_samples`` on a small model of its own compiles at most `MAX_FIRST` programs, and
a second ``run`` of the same engine object compiles none (tests/engines/compile_counts.py
counts programs lowered to XLA with ``jax.monitoring``). Before the change the first call compiled
153 (particle engines) to 430 (FBGVI) programs: the model traced op by op, the result's
checks and the density engines' draws run eagerly, a check's closure re-jitted at every run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MAX_FIRST = 12
ENGINES = ("SVGD", "CoinSVGD", "KSDD", "CoinKSDD", "MSVGD", "SVMD", "CoinMSVGD", "SVNG",
           "IsoGaussianMixtureVI", "FBGVI", "MixFlow", "CoinLAWGD")


def _counts(names):
    script = Path(__file__).with_name("compile_counts.py")
    # a fresh process without the suite's persistent compilation cache (conftest.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE",
                                                                    "JAX_PERSISTENT_CACHE"))}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, str(script), *names], capture_output=True, text=True,
                         env=env, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# two processes (one per xdist worker); each engine's model is its own, so an engine's count
# includes tracing its model, its initial points and the result's checks; programs shared by
# every engine (one fold_in, the per-run keys) are compiled by the first engine of a process
# ~100 s of CPU (each engine compiles its programs from nothing): with `make test-slow`; the
# default run checks the second-run half in tests/engines/test_determinism.py
@pytest.mark.slow
@pytest.mark.parametrize("names", [ENGINES[:6], ENGINES[6:]], ids=["first-six", "last-six"])
def test_first_run_compiles_few_programs_and_a_second_none(names):
    counts = _counts(names)
    assert set(counts) == set(names)
    too_many = {k: v for k, v in counts.items() if v[0] > MAX_FIRST or v[1] != 0}
    assert not too_many, (too_many, counts)
    assert all(v[0] > 0 for v in counts.values()), counts   # the counter does count
