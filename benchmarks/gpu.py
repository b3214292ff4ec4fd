"""Cold and warm calls against NUTS, and SVGD's particle scaling, on whatever device JAX sees.

    python -m benchmarks.gpu [--models a,b] [--engines x,y] [--particles 1000,5000,...]
        [--out FILE]

Run it whenever a GPU is lent (issue 19; about 5 minutes there) and on the CPU. Part 1: on the
breast-cancer logistic regression (31 parameters) and two posteriordb posteriors (kidiq, arK),
NUTS (one chain, 1000 warmup + 1000 draws; run first and again after the engines, since this
machine's speed drifts) and every engine with its defaults (1000 steps; the density engines'
1000 draws), each in a fresh Python process as a user's first call is:

* ``cold_s``: construction, ``run`` and ``get_samples``, compilation included (the keys are
  made before the clock starts);
* ``warm_s``: the same object run again from another key in that process (compiled programs
  reused);
* ``mean_err`` / ``sd_err``: max over scalar parameters of |mean - ref mean| / ref sd and
  |sd / ref sd - 1|, against posteriordb's reference draws (kidiq, arK) or a NUTS run of
  4 x 2000 draws made once per model (the logistic regression), i.e. "within NUTS accuracy"
  is what NUTS's own row shows.

Part 2: SVGD steps/s at d = 50 (a standard Gaussian target) for each particle count of
``--particles`` (default 1k/5k/20k/50k on an accelerator; 1k/5k on a CPU, where 20,000 takes
about 20 s per step); the kernel layout is ``block_size="auto"`` (dense while it fits the
device's memory, `numpyro_gflow.core.kernels.auto_dense_max`).

Prints a markdown report (device, date, both tables) and writes it to ``--out`` (default
``benchmarks/results/gpu-<platform>.md``); paste it into docs/scale.md with the date and device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("breast_cancer", "kidiq-kidscore_interaction", "arK-arK")
ENGINES = ("SVGD", "CoinSVGD", "CoinKSDD", "MSVGD", "SVNG", "IsoGaussianMixtureVI", "FBGVI",
           "MixFlow")
STEPS = 1000


def _model(name):
    if name == "breast_cancer":
        from numpyro_gflow.datasets import load_breast_cancer
        from numpyro_gflow.datasets.models import logistic_regression

        X, y = load_breast_cancer()
        return logistic_regression, (np.asarray(X, np.float32),), {"y": np.asarray(y, np.int32)}
    from numpyro_gflow.datasets import posteriordb

    post = posteriordb.load(name)
    return post.model, post.args, post.kwargs


def _flat(samples, names):
    cols = []
    for k in names:
        v = np.asarray(samples[k], np.float64)
        cols.append(v.reshape(v.shape[0], -1))
    return np.concatenate(cols, axis=1)


def _reference(name, sites):
    """(mean, sd) per scalar parameter of ``sites``."""
    if name != "breast_cancer":
        from numpyro_gflow.datasets import posteriordb

        post = posteriordb.load(name)
        return None, post
    cache = ROOT / "benchmarks" / "results" / "gpu-breast-cancer-nuts.npz"
    if cache.exists():
        ref = np.load(cache)
        return (ref["mean"], ref["sd"]), None
    import jax
    from numpyro.infer import MCMC, NUTS

    model, args, kwargs = _model(name)
    mcmc = MCMC(NUTS(model), num_warmup=1000, num_samples=2000, num_chains=4,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(123), *args, **kwargs)
    x = _flat(mcmc.get_samples(), sites)
    mean, sd = x.mean(0), x.std(0, ddof=1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, mean=mean, sd=sd)
    return (mean, sd), None


def one(model_name, engine):
    """One (model, engine) measurement in this process; returns a record."""
    import jax

    import numpyro_gflow as gf

    model, args, kwargs = _model(model_name)
    made = {}

    def call(key, draw_key):
        # the first call builds the object; the warm call runs the same object again (what
        # a user's second call does), so its compiled programs are reused. The keys are made
        # before the clock starts (for NUTS too): making one is not inference, and an eager
        # fold_in compiles a random-bit generator of its own (~0.2 s on a CPU)
        jax.block_until_ready((key, draw_key))
        t0 = time.perf_counter()
        if engine == "NUTS":
            from numpyro.infer import MCMC, NUTS

            if "obj" not in made:
                made["obj"] = MCMC(NUTS(model), num_warmup=1000, num_samples=1000,
                                   progress_bar=False)
            mcmc = made["obj"]
            mcmc.run(key, *args, **kwargs)
            samples = mcmc.get_samples()
        else:
            if "obj" not in made:
                made["obj"] = getattr(gf, engine)(model)
            res = made["obj"].run(key, STEPS, *args, progress_bar=False, diagnose=False,
                                  **kwargs)
            samples = (res.get_samples(1000, draw_key)
                       if res.sampler_available() else res.get_samples())
        jax.block_until_ready(samples)
        return time.perf_counter() - t0, samples

    cold, _ = call(jax.random.key(0), jax.random.key(10))
    warm, samples = call(jax.random.key(1), jax.random.key(11))
    bridge = gf.ModelBridge.from_model(model, *args, **kwargs)
    sites = bridge.site_names
    moments, post = _reference(model_name, sites)
    if post is not None:
        err = post.errors(samples)
        mean_err, sd_err = err["max_mean_err"], err["max_sd_err"]
    else:
        x = _flat(samples, sites)
        mean, sd = moments
        mean_err = float(np.max(np.abs(x.mean(0) - mean) / sd))
        sd_err = float(np.max(np.abs(x.std(0, ddof=1) / sd - 1)))
    return {"model": model_name, "engine": engine, "cold_s": cold, "warm_s": warm,
            "mean_err": mean_err, "sd_err": sd_err}


def svgd_rate(num_particles, dim=50, steps=None):
    """SVGD steps/s on a standard Gaussian in ``dim`` dimensions (core layer: the kernel cost
    alone), timed after a compiled warm-up."""
    import jax
    import jax.numpy as jnp

    from numpyro_gflow.core import svgd
    from numpyro_gflow.core.kernels import RBFKernel
    from numpyro_gflow.core.optim import coin_betting

    steps = steps or max(2, min(200, int(2e9 / (num_particles ** 2 * dim))))
    opt = coin_betting()

    def score_fn(x, key=None):
        return -0.5 * jnp.sum(x ** 2, -1), -x

    @jax.jit
    def many(state):
        body = lambda s, _: (svgd.step(s, score_fn, RBFKernel(), opt)[0], None)  # noqa: E731
        return jax.lax.scan(body, state, None, length=steps)[0]

    x0 = jax.random.normal(jax.random.key(0), (num_particles, dim))
    state = svgd.init(x0, opt, jax.random.key(1))
    jax.block_until_ready(many(state))
    t0 = time.perf_counter()
    jax.block_until_ready(many(state))
    return steps / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--particles", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(one(*a.one)))
        return
    if a.rate:
        print(json.dumps({"particles": a.rate, "steps_per_s": svgd_rate(a.rate)}))
        return
    import jax

    device = jax.devices()[0]
    platform = device.platform
    particles = ([int(n) for n in a.particles.split(",")] if a.particles else
                 [1000, 5000] if platform == "cpu" else [1000, 5000, 20000, 50000])
    rows = []
    for model in a.models.split(","):
        # NUTS first and again last: the machine's speed drifts (measured +-0.3 s between
        # runs of one first call on this 2-core CPU), so the engines sit between two NUTS rows
        for engine in ["NUTS"] + a.engines.split(",") + ["NUTS"]:
            out = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--one", model, engine],
                                 capture_output=True, text=True, cwd=ROOT, check=False)
            if out.returncode:
                rows.append({"model": model, "engine": engine,
                             "error": out.stderr.strip().splitlines()[-1][:120]})
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr, flush=True)
    rates = []
    for n in particles:
        out = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--rate", str(n)],
                             capture_output=True, text=True, cwd=ROOT, check=False)
        rates.append(json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0
                     else {"particles": n, "error": out.stderr.strip().splitlines()[-1][:120]})
        print(rates[-1], file=sys.stderr, flush=True)
    lines = [f"Measured {datetime.date.today()} on {device.device_kind} ({platform}); "
             "`python -m benchmarks.gpu`.", "",
             "| model | engine | cold s | warm s | max mean err (ref sd) | max sd err |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['engine']} | error: {r['error']} | | | |")
        else:
            lines.append(f"| {r['model']} | {r['engine']} | {r['cold_s']:.1f} | "
                         f"{r['warm_s']:.2f} | {r['mean_err']:.3f} | {r['sd_err']:.3f} |")
    lines += ["", "| SVGD particles (d = 50) | steps/s |", "| --- | --- |"]
    for r in rates:
        rate = f"{r['steps_per_s']:.2f}" if "steps_per_s" in r else f"error: {r['error']}"
        lines.append(f"| {r['particles']} | {rate} |")
    report = "\n".join(lines) + "\n"
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"gpu-{platform}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
