"""Mini-batches at 10^6 rows (issue 9): logistic regression, 10 covariates + intercept.

    nice .venv/bin/python -m benchmarks.experiments.minibatch_1e6.minibatch_1e6 [--rows 1000000]

writes ``MINIBATCH_1E6.md`` next to this script.

Data: synthetic, ``numpy.random.default_rng(0)``, X ~ N(0, I_10), true w ~ N(0, I)/sqrt(10),
b = 0.5, y ~ Bernoulli(sigmoid(X w + b)); model b ~ N(0, 5), w ~ N(0, I).

Runs, each timed (wall, compilation included, then a second timed call where cheap):

* **NUTS, full data**: NumPyro NUTS, 1 chain, 500 warmup + 1000 draws on all rows (the
  reference: posterior means and sds).
* **FB-GVI stochastic, streamed**: ``gf.FBGVI(stochastic=True)`` (one draw per step, the
  paper's decreasing step), batches of ``BATCH`` rows streamed from host memory
  (``gf.StreamedData``), ``STEPS`` steps.
* **FB-GVI stochastic, on-device subsample**: the same with ``numpyro.plate(...,
  subsample_size=BATCH)`` in the model and the data on the device.
* **10^4-row subset check**: NUTS on the first 10^4 rows against streamed FB-GVI on them
  (batches of 500, 2000 steps), as in tests/engines/test_streaming.py.

Accuracy: ``|mean - NUTS mean| / NUTS sd`` (max over the 11 parameters) and sd ratios.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))   # the repository
if ROOT not in sys.path:   # run as a script: import numpyro_gflow from this checkout
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import numpyro_gflow as gf  # noqa: E402

D = 10
BATCH = 10_000
STEPS = 20_000


def make_data(rows: int):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, D)).astype(np.float32)
    w = rng.standard_normal(D) / np.sqrt(D)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(X @ w + 0.5)))).astype(np.float32)
    return X, y


def full_model(X, y=None):
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(logits=X @ w + b), obs=y)


def streamed_model(X, y=None, num_rows=None):
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
    with numpyro.plate("data", num_rows, subsample_size=X.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(logits=X @ w + b), obs=y)


def subsampled_model(X, y=None, batch=BATCH):
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
    with numpyro.plate("data", X.shape[0], subsample_size=batch) as idx:
        numpyro.sample("obs", dist.Bernoulli(logits=X[idx] @ w + b), obs=y[idx])


def flat(s):
    return np.column_stack([np.asarray(s["b"]), np.asarray(s["w"])])


def nuts(X, y, num_warmup=500, num_samples=1000):
    from numpyro.infer import MCMC, NUTS

    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(full_model), num_warmup=num_warmup, num_samples=num_samples,
                progress_bar=False)
    mcmc.run(jax.random.key(1), jax.numpy.asarray(X), jax.numpy.asarray(y))
    theta = flat(mcmc.get_samples())
    return theta.mean(0), theta.std(0), time.perf_counter() - t0


def compare(res, ref):
    mean, sd = ref[:2]
    theta = flat(res.get_samples(20_000, jax.random.key(9)))
    err = np.abs(theta.mean(0) - mean) / sd
    ratio = theta.std(0) / sd
    return float(err.max()), float(ratio.min()), float(ratio.max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10**6)
    ap.add_argument("--steps", type=int, default=STEPS)
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    t_all = time.perf_counter()
    X, y = make_data(a.rows)
    rows = []

    ref = nuts(X, y)
    rows.append(("NUTS, full data (500 + 1000)", f"{ref[2]:.0f}", "-", "0 (reference)", "1, 1"))
    print(rows[-1], flush=True)

    def timed_row(label, fit, steps, reference):
        t0 = time.perf_counter()
        res = fit()
        jax.block_until_ready(res.state)
        wall = time.perf_counter() - t0
        e, lo, hi = compare(res, reference)
        rows.append((label, f"{wall:.0f}", f"{steps / wall:.0f}", f"{e:.3f}", f"{lo:.3f}-{hi:.3f}"))
        print(rows[-1], flush=True)

    loader = gf.StreamedData(BATCH, X=X, y=y)
    timed_row(f"FB-GVI stochastic, streamed batches of {BATCH} ({a.steps} steps)",
              lambda: gf.FBGVI(streamed_model, stochastic=True).run(
                  jax.random.key(0), a.steps, num_rows=a.rows, data_loader=loader,
                  progress_bar=False),
              a.steps, ref)
    Xd, yd = jax.numpy.asarray(X), jax.numpy.asarray(y)
    timed_row(f"FB-GVI stochastic, on-device subsample {BATCH} ({a.steps} steps)",
              lambda: gf.FBGVI(subsampled_model, stochastic=True).run(
                  jax.random.key(0), a.steps, Xd, yd, progress_bar=False),
              a.steps, ref)

    # the subset check of the issue: 10^4 rows, NUTS on all of them vs streamed batches of 500
    Xs, ys = X[:10_000], y[:10_000]
    sub_ref = nuts(Xs, ys, 1000, 4000)
    timed_row("10^4-row subset: FB-GVI stochastic, streamed 500 (2000 steps) vs NUTS (1000 + 4000) "
              "on those rows",
              lambda: gf.FBGVI(streamed_model, stochastic=True).run(
                  jax.random.key(0), 2000, num_rows=10_000,
                  data_loader=gf.StreamedData(500, X=Xs, y=ys), progress_bar=False),
              2000, sub_ref)

    lines = [
        "# Mini-batches at 10^6 rows (issue 9)", "",
        f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by "
        "`python -m benchmarks.experiments.minibatch_1e6.minibatch_1e6` "
        f"in {(time.perf_counter() - t_all) / 60:.1f} min on {platform.machine()} Linux, "
        f"{os.cpu_count()} CPU cores (load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end), JAX {jax.__version__} (CPU, float32), "
        f"NumPyro {numpyro.__version__}.", "",
        f"Logistic regression, {a.rows:,} synthetic rows, 10 covariates + intercept (see the "
        "script's docstring). Wall time includes compilation. Errors are against NUTS on the "
        "same rows: max over the 11 parameters of |mean - NUTS mean| / NUTS sd, and the range of "
        "sd / NUTS sd.",
        "",
        "| run | wall s | steps/s | max mean err (NUTS sd) | sd ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ] + [f"| {' | '.join(r)} |" for r in rows] + [""]
    with open(os.path.join(HERE, "MINIBATCH_1E6.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
