"""`gf.enable_compilation_cache`: a second process reads the first one's programs from disk
(issue 19's opt-in), with the same result; bad arguments are refused."""

import json
import os
import subprocess
import sys

import pytest

import numpyro_gflow as gf

SCRIPT = r"""
import json, sys
import jax, numpy as np, numpyro, numpyro.distributions as dist
import numpyro_gflow as gf

hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(1) if event == "/jax/compilation_cache/cache_hits" else None)
gf.enable_compilation_cache(sys.argv[1])

def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

y = np.linspace(-1.0, 3.0, 20, dtype=np.float32)
res = gf.SVGD(model, num_particles=10).run(jax.random.key(0), 20, y, progress_bar=False,
                                            diagnose=False)
print(json.dumps({"hits": len(hits), "mu": np.asarray(res.get_samples()["mu"]).tolist()}))
"""


def _run(cache):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE",
                                                                    "JAX_PERSISTENT_CACHE"))}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], capture_output=True,
                         text=True, env=env, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_reads_the_first_ones_programs(tmp_path):
    cache = tmp_path / "xla"
    first, second = _run(cache), _run(cache)
    assert first["hits"] == 0          # an empty cache
    assert any(cache.iterdir())        # the first process wrote its programs
    assert second["hits"] >= 3         # the setup, the loop and the result's programs at least
    assert second["mu"] == first["mu"]


@pytest.mark.parametrize("arg, err", [(-1.0, ValueError), ("1", TypeError), (True, TypeError)])
def test_bad_min_compile_time(arg, err, tmp_path):
    with pytest.raises(err, match="min_compile_time_secs"):
        gf.enable_compilation_cache(tmp_path, min_compile_time_secs=arg)
