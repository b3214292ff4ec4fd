"""Mini-batch bias on a hierarchical regression (issue 20): which settings converge?

500 rows in 10 groups, ``y ~ Normal(alpha[group] + beta x, sigma)``, ``alpha ~ Normal(mu,
tau)``; 50-row batches from the subsampled plate. Each line: the worst posterior mean error
over the 14 scalars in sds of NUTS on all rows (1000 + 4000 draws), the worst sd error, the
wall time; then each site's (mean error / sd error). The numbers are in docs/scale.md
("Which settings converge on mini-batches") and tests/engines/test_minibatch.py.

    .venv/bin/python benchmarks/experiments/minibatch_bias/probe.py fb fbavg fbdet svgd svgd2 svgdbw
"""

import sys
import time

import jax
import numpy as np
import optax
from numpyro.infer import MCMC, NUTS

import numpyro_gflow as gf
from numpyro_gflow.datasets.models import grouped_regression as model
from numpyro_gflow.datasets.models import grouped_regression_data

BATCH = 50
g, x, y = grouped_regression_data()     # 500 rows, 10 groups


def errors(samples, ref):
    rows = {}
    for k, r in ref.items():
        s = np.asarray(samples[k])
        rows[k] = (float(np.max(np.abs(s.mean(0) - r.mean(0)) / r.std(0))),
                   float(np.max(np.abs(s.std(0) / r.std(0) - 1))))
    return rows


def decaying_sgd(num_steps, start=0.05, end=0.001):
    return optax.sgd(optax.polynomial_schedule(start, end, 1, num_steps))


def main(which):
    mcmc = MCMC(NUTS(model), num_warmup=1000, num_samples=4000, progress_bar=False)
    mcmc.run(jax.random.key(0), g, x, y)
    ref = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}

    def go(name, engine, steps, key=1, batch=BATCH):
        t = time.perf_counter()
        res = engine.run(jax.random.key(key), steps, g, x, y, batch=batch, progress_bar=False,
                         diagnose=False)
        try:
            samples = res.get_samples(2000, jax.random.key(9))
        except (TypeError, ValueError):      # particle engines: the particles
            samples = res.get_samples()
        rows = errors(samples, ref)
        worst = max(rows, key=lambda k: rows[k][0])
        print(f"{name:<45} mean {rows[worst][0]:6.3f} ({worst})  "
              f"sd {max(v[1] for v in rows.values()):6.3f}  {time.perf_counter() - t:5.1f}s")
        print("    " + "  ".join(f"{k} {m:.2f}/{v:.2f}" for k, (m, v) in rows.items()),
              flush=True)

    if "fb" in which:
        go("FBGVI full data", gf.FBGVI(model), 1000, batch=None)
        go("FBGVI det mb", gf.FBGVI(model), 2000)
        go("FBGVI stochastic mb 2000", gf.FBGVI(model, stochastic=True), 2000)
        go("FBGVI stochastic mb 10000", gf.FBGVI(model, stochastic=True), 10000)
    if "fbavg" in which:   # averaged iterates (the default) vs the last iterate, 5 keys
        for k in range(1, 6):
            go(f"FBGVI stochastic mb 10000 key {k}", gf.FBGVI(model, stochastic=True), 10000,
               key=k)
            go(f"  last iterate, key {k}", gf.FBGVI(model, stochastic=True, average=False),
               10000, key=k)
    if "fbdet" in which:
        go("FBGVI det mb, no Laplace start", gf.FBGVI(model, precondition=None), 2000)
        go("FBGVI det mb 10000", gf.FBGVI(model), 10000)
        go("FBGVI det mb key 2", gf.FBGVI(model), 2000, key=2)
    if "svgd" in which:
        go("SVGD full data", gf.SVGD(model), 2000, batch=None)
        go("SVGD mb default", gf.SVGD(model), 2000)
        go("SVGD mb 10000", gf.SVGD(model), 10000)
        go("SVGD mb decaying sgd", gf.SVGD(model, optimizer=decaying_sgd(4000)), 4000)
        go("CoinSVGD mb", gf.CoinSVGD(model), 2000)
    if "svgd2" in which:
        for n in (100, 300, 500):
            go(f"SVGD full {n}p 4000", gf.SVGD(model, num_particles=n), 4000, batch=None)
            go(f"SVGD mb {n}p decaying sgd 4000",
               gf.SVGD(model, num_particles=n, optimizer=decaying_sgd(4000)), 4000)
    if "svgdbw" in which:   # the documented mini-batch setting: bandwidth 2 d, decaying step
        d = gf.ModelBridge.from_model(model, g, x, y, batch=BATCH).dim
        go("SVGD full data, bandwidth 2d", gf.SVGD(model, kernel=gf.RBFKernel(bandwidth=2.0 * d)),
           2000, batch=None)
        for k in range(1, 6):
            go(f"SVGD mb bandwidth 2d decaying 10^4, key {k}",
               gf.SVGD(model, kernel=gf.RBFKernel(bandwidth=2.0 * d),
                       optimizer=decaying_sgd(10_000)), 10_000, key=k)
        go("SVGD mb median decaying 10^4", gf.SVGD(model, optimizer=decaying_sgd(10_000)),
           10_000)


if __name__ == "__main__":
    main(sys.argv[1:] or ["fb", "svgd"])
