"""Run by tests/engines/test_compiles.py in a fresh process: every engine's first ``run`` +
``get_samples`` on a small model of its own, then a second ``run`` of the same engine object,
counting compilations (programs lowered to XLA, ``jax.monitoring``). Prints one JSON line."""

import json
import sys

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

import numpyro_gflow as gf

COMPILES = []


def _listen(event, duration, **kwargs):
    # lowered to an XLA module: counted whether XLA then compiles it or finds it in a
    # persistent cache
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        COMPILES.append(duration)


def regression():
    """A fresh model function (nothing compiled for it yet): a line with unknown noise."""
    def model(x, y=None):
        a = numpyro.sample("a", dist.Normal(0.0, 10.0))
        b = numpyro.sample("b", dist.Normal(0.0, 10.0))
        s = numpyro.sample("s", dist.HalfNormal(5.0))
        with numpyro.plate("n", x.shape[0]):
            numpyro.sample("y", dist.Normal(a + b * x, s), obs=y)
    return model


def correlated_2d():
    def model():
        x = numpyro.sample("x", dist.Normal(1.0, 1.0))
        numpyro.sample("z", dist.Normal(0.6 * x, 1.5))
    return model


def main(names):
    x = np.linspace(-1.0, 1.0, 40, dtype=np.float32)
    y = (1.0 + 2.0 * x + 0.3 * np.sin(7.0 * x)).astype(np.float32)
    k_run, k_draw = jax.random.key(0), jax.random.key(1)
    jax.block_until_ready((k_run, k_draw))
    jax.monitoring.register_event_duration_secs_listener(_listen)
    out = {}
    for name in names:
        if name == "CoinLAWGD":
            engine, args, kwargs = gf.CoinLAWGD(correlated_2d(), num_particles=50), (), {}
        else:
            engine, args, kwargs = getattr(gf, name)(regression()), (x,), {"y": y}
        counts = []
        for _ in range(2):
            start = len(COMPILES)
            result = engine.run(k_run, 50, *args, progress_bar=False, **kwargs)
            samples = (result.get_samples(1000, k_draw) if result.sampler_available()
                       else result.get_samples())
            jax.block_until_ready(samples)
            counts.append(len(COMPILES) - start)
        out[name] = counts
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
