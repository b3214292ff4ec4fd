"""Scaling benchmark (issue 9): speed and peak memory vs particle count and vs data size.

    nice .venv/bin/python benchmarks/experiments/scale/scale.py
        [--quick] [--only particles,data,overhead,rff]

writes ``SCALE.md`` and the log-log plot ``scale.png`` next to this script.

Model: Bayesian logistic regression on synthetic data, d = 10 covariates plus an intercept
(11 unconstrained parameters), ``b ~ N(0, 5)``, ``w ~ N(0, I)``, the likelihood in a
``numpyro.plate`` (optionally ``subsample_size=1000``: NumPyro's mini-batch rescaling).

Sections:

* **particles**: steps/second and peak memory vs particle count n (100 ... 20,000) on 1,000
  rows, for our ``SVGD`` and ``CoinSVGD`` (default RBF kernel, median heuristic; dense kernel
  sums up to 8192 particles, row blocks above), ``SVGD`` with random Fourier features
  (``RBFKernel(num_features=512)``), NumPyro's ``contrib.einstein.SteinVI`` (AutoDelta guide,
  RBF kernel, as ``benchmarks/run.py`` builds it) and BlackJAX's ``svgd`` (median heuristic
  each step, our AdaGrad). An engine stops at the first n whose point takes over
  ``CAP_S`` seconds or fails, or whose predicted time (previous step time x (n ratio)^2) is over
  ``CAP_S``.
* **data**: the same vs data rows N (10^3 ... 10^6), 100 particles, full data and with a
  subsample plate of 1,000 rows (not BlackJAX: its gradient is our own full-data closure), and
  ``SVGD-streamed``: batches of 1,000 rows streamed from host memory (``gf.StreamedData``, the
  data never on the device as a whole).
* **overhead**: ``gf.SVGD(...).run`` against a hand-written ``jax.jit`` + ``lax.scan`` loop of
  ``numpyro_gflow.core.svgd.step`` on the bridge's score function (same kernel, optimizer, info).
* **rff**: error of the random-feature SVGD direction against the exact one vs M, time of one
  direction vs n, and the effect on a converged SVGD run (fixed vs redrawn features).

Each point runs in a fresh subprocess (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is then
that point's peak, imports and compilation included). Each timed fit is called twice with the
same inputs; the second call is timed, and the time JAX spent compiling during it (from
``jax.monitoring``) is subtracted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))   # the repository
if ROOT not in sys.path:   # run as a script (and its workers): import benchmarks.*
    sys.path.insert(0, ROOT)
D = 10
STEP_SIZE = 0.05
CAP_S = 60.0                 # a point that takes longer (or is predicted to) ends that engine's
                             # sweep
HARD_TIMEOUT_S = 150.0
RFF_TIMEOUT_S = 480.0        # the rff section is one process (the exact direction at n = 20,000)
SUBSAMPLE = 1000
RFF_M = 512
FULL = {
    "particles": (100, 300, 1000, 3000, 10000, 20000),
    "rows": (10**3, 10**4, 10**5, 10**6),
    # (n, rows, steps); at 10^5 rows with 10 steps the engine's one-off costs (the initial
    # point search and the result, each about one full-data pass) are a visible share
    "overhead": ((100, 1000, 200), (1000, 1000, 40), (100, 10**5, 10), (100, 10**5, 100)),
}
QUICK = {"particles": (100,), "rows": (10**3,), "overhead": ((100, 1000, 200),)}
PARTICLE_ENGINES = ("SVGD", "CoinSVGD", "SVGD-RFF", "SteinVI", "BlackJAX")
DATA_ENGINES = ("SVGD", "SVGD-streamed", "SteinVI", "BlackJAX")


def _data_modes(engine: str):
    """Subsample settings an engine is run with in the data section."""
    if engine == "BlackJAX":
        return (None,)                # its gradient is our own full-data closure
    if engine == "SVGD-streamed":
        return (SUBSAMPLE,)           # batches from host memory only
    return (None, SUBSAMPLE)


def _data_label(engine: str, sub) -> str:
    if sub is None:
        return "full"
    return f"streamed {sub}" if engine == "SVGD-streamed" else f"subsample {sub}"


def steps_for(n: int, rows: int) -> int:
    """Steps per timed call: about 2e4 particle-steps, at least 1 (few for expensive points)."""
    s = max(1, min(200, 20000 // n))
    if rows >= 10**5:
        s = min(s, max(2, 10**7 // (rows * n // 100) // 10))
    return s


# ----------------------------------------------------------------------------- worker side
def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def _model():
    import numpyro
    import numpyro.distributions as dist

    def logistic(X, y=None, subsample=None):
        b = numpyro.sample("b", dist.Normal(0.0, 5.0))
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("data", X.shape[0], subsample_size=subsample) as idx:
            Xb = X if subsample is None else X[idx]
            yb = y if subsample is None else y[idx]
            numpyro.sample("obs", dist.Bernoulli(logits=Xb @ w + b), obs=yb)

    return logistic


def _data(rows: int):
    import numpy as np
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, D)).astype("float32")
    w = rng.standard_normal(D) / np.sqrt(D)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(X @ w + 0.5)))).astype("float32")
    return X, y


def _builder(engine: str, n: int, X, y, subsample):
    """A function key -> fitted arrays (blocked until ready), for ``steps`` steps."""
    import jax
    import jax.numpy as jnp

    import numpyro_gflow as gf
    from numpyro_gflow.core.optim import svgd_adagrad

    model = _model()
    kw = {} if subsample is None else {"subsample": subsample}
    if engine == "SVGD-streamed":
        import numpy as np
        import numpyro
        import numpyro.distributions as dist

        def streamed(X, y, num_rows):
            b = numpyro.sample("b", dist.Normal(0.0, 5.0))
            w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
            with numpyro.plate("data", num_rows, subsample_size=X.shape[0]):
                numpyro.sample("obs", dist.Bernoulli(logits=X @ w + b), obs=y)

        loader = gf.StreamedData(subsample, X=np.asarray(X), y=np.asarray(y))
        eng = gf.SVGD(streamed, num_particles=n, step_size=STEP_SIZE)
        return lambda key, steps: jax.block_until_ready(
            eng.run(key, steps, num_rows=loader.num_rows, data_loader=loader,
                    progress_bar=False).state)
    if engine in ("SVGD", "CoinSVGD", "SVGD-RFF"):
        if engine == "SVGD":
            eng = gf.SVGD(model, num_particles=n, step_size=STEP_SIZE)
        elif engine == "SVGD-RFF":
            eng = gf.SVGD(model, num_particles=n, step_size=STEP_SIZE,
                          kernel=gf.RBFKernel(num_features=RFF_M))
        else:
            eng = gf.CoinSVGD(model, num_particles=n)
        return lambda key, steps: jax.block_until_ready(
            eng.run(key, steps, X, y, progress_bar=False, **kw).state)

    if engine == "SteinVI":
        from numpyro.contrib.einstein import RBFKernel, SteinVI
        from numpyro.infer.autoguide import AutoDelta
        from numpyro.infer.initialization import init_to_uniform
        from numpyro.optim import optax_to_numpyro

        guide = AutoDelta(model, init_loc_fn=init_to_uniform)
        stein = SteinVI(model, guide, optax_to_numpyro(svgd_adagrad(STEP_SIZE)), RBFKernel(),
                        num_stein_particles=n, num_elbo_particles=1, loss_temperature=1.0 / n)
        return lambda key, steps: jax.block_until_ready(
            stein.run(key, steps, X, y, progress_bar=False, **kw).params)

    if engine == "BlackJAX":
        import blackjax
        from jax.flatten_util import ravel_pytree
        from numpyro.infer.util import initialize_model

        if subsample is not None:
            raise ValueError("BlackJAX: full data only here")
        info = initialize_model(jax.random.key(0), model, model_args=(X, y))
        flat0, unravel = ravel_pytree(info.param_info.z)
        potential = info.potential_fn
        grad_log_density = jax.grad(lambda z: -potential(unravel(z)))
        opt = svgd_adagrad(STEP_SIZE)
        svgd = blackjax.svgd(grad_log_density, opt)

        @jax.jit
        def fit(x0, steps_arr):
            state = svgd.init(x0)
            state = blackjax.vi.svgd.update_median_heuristic(state)
            return jax.lax.scan(lambda s, _: (svgd.step(s), None), state, steps_arr)[0].particles

        def run(key, steps):
            x0 = jax.random.uniform(key, (n, flat0.shape[0]), minval=-2.0, maxval=2.0)
            return jax.block_until_ready(fit(x0, jnp.zeros(steps)))

        return run

    if engine == "hand":
        # the same SVGD update as gf.SVGD, written as jit + scan over the core functions
        from numpyro_gflow.core import svgd as svgd_core
        from numpyro_gflow.bridge import ModelBridge
        from numpyro_gflow.core.kernels import RBFKernel as GfRBF

        bridge = ModelBridge.from_model(model, X, y, **kw)
        kernel, opt = GfRBF(), svgd_adagrad(STEP_SIZE)
        d_flat = bridge.dim

        @jax.jit
        def fit(x0, key, steps_arr, X, y):   # data as arguments, as the engine passes them
            score_fn = bridge.score_fn((X, y), kw)
            state = svgd_core.init(x0, opt, key)
            return jax.lax.scan(lambda s, _: svgd_core.step(s, score_fn, kernel, opt), state,
                                steps_arr)

        def run(key, steps):
            x0 = jax.random.uniform(key, (n, d_flat), minval=-2.0, maxval=2.0)
            return jax.block_until_ready(fit(x0, key, jnp.zeros(steps), X, y))

        return run
    raise ValueError(engine)


def worker(spec: dict) -> dict:
    if spec["kind"] == "rff":
        return rff_worker(spec)
    import jax
    from benchmarks.run import CompileClock

    clock = CompileClock()
    X, y = _data(spec["rows"])
    X, y = jax.numpy.asarray(X), jax.numpy.asarray(y)
    out = dict(spec, rss_base_mib=_rss_mib())
    fit = _builder(spec["engine"], spec["n"], X, y, spec.get("subsample"))
    steps = spec["steps"]
    t0 = time.perf_counter()
    fit(jax.random.key(0), steps)
    out["first_call_s"] = time.perf_counter() - t0
    c0, t0 = clock.seconds, time.perf_counter()
    fit(jax.random.key(0), steps)
    wall = time.perf_counter() - t0
    out["run_s"], out["recompile_s"] = wall, clock.seconds - c0
    out["step_s"] = (wall - out["recompile_s"]) / steps
    out["steps_per_s"] = 1.0 / out["step_s"]
    out["peak_rss_mib"] = _peak_mib()
    return out


def rff_worker(spec: dict) -> dict:
    """Random features: direction error vs M, direction time vs n, effect on a converged run."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from numpyro_gflow.core.kernels import RBFKernel, svgd_direction
    from numpyro_gflow.core.optim import svgd_adagrad

    quick = spec["quick"]
    out = {"kind": "rff", "err_vs_m": [], "timing": [], "runs": []}
    # (1) relative error ||phi_M - phi|| / ||phi|| on particles away from the target
    for n, d in ((1000, 10), (2000, 50)):
        x = jax.random.normal(jax.random.key(0), (n, d)) * 1.5 + 0.5
        score = -x + 0.3
        exact, _ = svgd_direction(RBFKernel(block_size=None), x, score)
        for m in ((64, 1024) if quick else (64, 256, 1024, 4096, 16384)):
            errs = [float(jnp.linalg.norm(svgd_direction(RBFKernel(num_features=m, feature_seed=s),
                                                         x, score)[0] - exact)
                          / jnp.linalg.norm(exact))
                    for s in range(3)]
            out["err_vs_m"].append({"n": n, "d": d, "M": m, "rel_err": float(np.mean(errs)),
                                 "rel_err_sd": float(np.std(errs))})
    # (2) one direction (bandwidth included), d = 50: exact ("auto" blocks) vs M features
    d = 50
    for n in ((1000, 3000) if quick else (1000, 5000, 20000)):
        x = jax.random.normal(jax.random.key(1), (n, d)) * 2.0 + 1.0
        score = -x
        for label, kern in [("exact", RBFKernel())] + [(f"M={m}", RBFKernel(num_features=m))
                                                       for m in (256, 2048)]:
            f = jax.jit(lambda x, s, k=kern: svgd_direction(k, x, s))
            t0 = time.perf_counter()
            jax.block_until_ready(f(x, score))
            first = time.perf_counter() - t0
            reps = 1 if first > 5 else 3
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                jax.block_until_ready(f(x, score))
                ts.append(time.perf_counter() - t0)
            out["timing"].append({"n": n, "d": d, "kernel": label, "direction_s": min(ts)})
    # (3) effect on a run: correlated Gaussian, d = 10, n = 1000, 1000 AdaGrad steps
    d, n, steps = 10, (300 if quick else 1000), (300 if quick else 1000)
    A = jax.random.normal(jax.random.key(5), (d, d)) / jnp.sqrt(d) + jnp.eye(d)
    cov = A @ A.T
    prec, mu, sd = jnp.linalg.inv(cov), jnp.arange(d) / d, jnp.sqrt(jnp.diag(cov))

    def run(kernel, redraw):
        opt = svgd_adagrad(STEP_SIZE)
        x0 = jax.random.uniform(jax.random.key(1), (n, d), minval=-2.0, maxval=2.0)

        def body(c, k):
            x, s = c
            phi, _ = svgd_direction(kernel, x, -(x - mu) @ prec, rng_key=k if redraw else None)
            u, s = opt.update(-phi, s, x)
            return (optax.apply_updates(x, u), s), None

        fit = jax.jit(lambda x0: jax.lax.scan(body, (x0, opt.init(x0)),
                                              jax.random.split(jax.random.key(9), steps))[0][0])
        x = fit(x0)
        return {"mean_err_sd": float(jnp.max(jnp.abs(x.mean(0) - mu) / sd)),
                "sd_err": float(jnp.median(jnp.abs(x.std(0) / sd - 1))),
                "cov_rel_err": float(jnp.linalg.norm(jnp.cov(x.T) - cov) / jnp.linalg.norm(cov))}

    out["run_setup"] = {"n": n, "d": d, "steps": steps}
    out["runs"].append({"kernel": "exact", "features": "-",
                        **run(RBFKernel(block_size=None), False)})
    for m in ((128,) if quick else (128, 512, 2048)):
        for redraw in (False, True):
            out["runs"].append({"kernel": f"M={m}", "features": "redrawn" if redraw else "fixed",
                                **run(RBFKernel(num_features=m), redraw)})
    out["peak_rss_mib"] = _peak_mib()
    return out


# ----------------------------------------------------------------------------- driver side
def spawn(spec: dict) -> dict:
    cmd = ["nice", sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    limit = RFF_TIMEOUT_S if spec["kind"] == "rff" else HARD_TIMEOUT_S
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f"timed out after {limit:.0f} s", process_s=limit)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        return dict(spec, error=f"exit {proc.returncode}: {tail}", process_s=elapsed)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_s"] = elapsed
    return res


def sweep(engine: str, ns, rows: int, subsample=None) -> list[dict]:
    rows_out, last = [], None
    for n in ns:
        steps = steps_for(n, rows)
        if last is not None:
            pred = last["step_s"] * (n / last["n"]) ** 2 * (2 * steps)
            if pred > CAP_S:
                rows_out.append({"engine": engine, "n": n, "rows": rows, "subsample": subsample,
                                 "skipped": f"predicted {pred:.0f} s > {CAP_S:.0f} s"})
                break
        res = spawn({"kind": "fit", "engine": engine, "n": n, "rows": rows,
                     "subsample": subsample, "steps": steps})
        print(json.dumps(res), flush=True)
        rows_out.append(res)
        if "error" in res:
            break
        last = res
        if res["process_s"] > CAP_S:
            break
    return rows_out


def _fmt(v, spec="."):
    return "-" if v is None else format(v, spec)


def _cell(r):
    if r is None:
        return "-"
    if "skipped" in r:
        return "capped"
    if "error" in r:
        return "failed"
    return f"{r['steps_per_s']:.3g} / {r['peak_rss_mib']:.0f}"


def write_report(res: dict, cfg: dict, load: tuple, elapsed: float, quick: bool, merged=None):
    import jax
    import numpyro
    try:
        import blackjax
        bj = blackjax.__version__
    except ImportError:
        bj = "not installed"
    L = ["# Scaling: steps/second and peak memory vs particles and data size (issue 9)", "",
         f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by "
         "`benchmarks/experiments/scale/scale.py`"
         f"{' --quick' if quick else ''} in {elapsed / 60:.1f} min on {platform.machine()} Linux, "
         f"{os.cpu_count()} CPU cores shared with other jobs "
         f"(load average {load[0]:.1f} at the start, "
         f"{load[1]:.1f} at the end: **timings are noisy**, read ratios within a factor ~1.5), "
         f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; "
         f"JAX {jax.__version__} (CPU, float32), NumPyro {numpyro.__version__}, BlackJAX {bj}."
         + (f" Sections {', '.join(merged)} come from an earlier run of the script (`--merge`): "
            f"{res.get('merged_note', 'see its header')}." if merged else ""), "",
         "Model: Bayesian logistic regression on synthetic data, d = 10 covariates + intercept "
         "(11 parameters). Every point in a fresh process, run twice, the second call timed "
         "(compile time during it subtracted); steps/s = steps / that time. Peak memory = the "
         "process's `ru_maxrss` (imports, data, compilation included; an empty JAX process "
         "with the data is about 300 MiB). Cells are **steps/s / peak RSS MiB**. *capped*: "
         f"the engine's previous point predicted more than {CAP_S:.0f} s for this one (or took "
         "it), so its sweep stopped there; *failed*: error or out of memory.", ""]
    # particles
    if "particles" in res:
        rows = res["particles"]
        ns = cfg["particles"]
        L += ["## vs particle count (1,000 rows)", "",
              "| engine | " + " | ".join(f"n = {n}" for n in ns) + " |",
              "| --- |" + " ---: |" * len(ns)]
        for eng in PARTICLE_ENGINES:
            by_n = {r["n"]: r for r in rows if r["engine"] == eng}
            L.append(f"| {eng} | " + " | ".join(_cell(by_n.get(n)) for n in ns) + " |")
        L += ["", "Engines: `SVGD` = `gf.SVGD(model, num_particles=n, step_size=0.05)` "
              "(RBF, median heuristic, AdaGrad, dense kernel sums up to 8192 particles, "
              "blocks of 512 above); "
              "`CoinSVGD` = `gf.CoinSVGD(model, num_particles=n)`; `SVGD-RFF` = SVGD with "
              f"`RBFKernel(num_features={RFF_M})`; `SteinVI` = `numpyro.contrib.einstein.SteinVI` "
              "with `AutoDelta`, `RBFKernel()`, the same AdaGrad, as in `benchmarks/run.py`; "
              "`BlackJAX` = `blackjax.svgd` (`rbf_kernel`, `update_median_heuristic` every "
              "step, the same AdaGrad) in a `jit` + `lax.scan` loop on NumPyro's potential.", ""]
        errs = [r for r in rows if "error" in r or "skipped" in r]
        for r in errs:
            L.append(f"* {r['engine']} at n = {r['n']}: {r.get('error') or r.get('skipped')}")
        L.append("")
    if "data" in res:
        rows = res["data"]
        Ns = cfg["rows"]
        L += ["## vs data size (100 particles)", "",
              "| engine | data | " + " | ".join(f"N = {N:.0e}" for N in Ns) + " |",
              "| --- | --- |" + " ---: |" * len(Ns)]
        for eng in DATA_ENGINES:
            for sub in _data_modes(eng):
                by = {r["rows"]: r for r in rows
                      if r["engine"] == eng and r.get("subsample") == sub}
                L.append(f"| {eng} | {_data_label(eng, sub)} | "
                         + " | ".join(_cell(by.get(N)) for N in Ns) + " |")
        L += ["", "Subsample: `numpyro.plate('data', N, subsample_size=1000)` in the model "
              "(NumPyro rescales the likelihood by N / 1000); streamed: the model gets each "
              "1000-row batch from `gf.StreamedData` (host memory) and its plate of size N "
              "rescales; BlackJAX is run on full data only.", ""]
        for r in rows:
            if "error" in r or "skipped" in r:
                L.append(f"* {r['engine']} N = {r['rows']} ({r.get('subsample') or 'full'}): "
                         f"{r.get('error') or r.get('skipped')}")
        L.append("")
    if "overhead" in res:
        L += ["## Engine overhead", "",
              "`gf.SVGD(model, num_particles=n, step_size=0.05).run(key, steps, X, y)` "
              "(whole call: initialisation, the compiled loop in ~10 chunks, the result object) "
              "against a hand-written `jax.jit(lax.scan(svgd.step))` on `ModelBridge.score_fn` "
              "with the same kernel and optimizer (same per-step info returned). Target: "
              "ratio <= 1.2. The engine's per-call costs (initialisation, chunked dispatch, the "
              "result) do not shrink with the number of steps, so a short run on large data shows "
              "them most.", "",
              "| n | rows | steps | engine s/step | hand s/step | ratio |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for pair in res["overhead"]:
            e, h = pair
            if "error" in e or "error" in h:
                L.append(f"| {e['n']} | {e['rows']} | {e['steps']} | failed | | |")
                continue
            L.append(f"| {e['n']} | {e['rows']} | {e['steps']} | {e['step_s']:.3g} | "
                     f"{h['step_s']:.3g} | "
                     f"{e['step_s'] / h['step_s']:.2f} |")
        L.append("")
    if "rff" in res and "error" not in res["rff"]:
        r = res["rff"]
        L += ["## Random Fourier features (`RBFKernel(num_features=M)`)", "",
              "Relative error of the SVGD direction, `|phi_M - phi| / |phi|` (mean over 3 feature "
              "seeds), particles N(0.5, 1.5^2) against the target N(0.3, 1), median bandwidth:", "",
              "| n | d | M | rel. error | sd | error x sqrt(M) |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for e in r["err_vs_m"]:
            L.append(f"| {e['n']} | {e['d']} | {e['M']} | {e['rel_err']:.3f} | "
                     f"{e['rel_err_sd']:.3f} | "
                     f"{e['rel_err'] * e['M'] ** 0.5:.1f} |")
        L += ["", "Time of one direction (jit, bandwidth included), d = 50:", "",
              "| n | kernel | direction s |", "| ---: | --- | ---: |"]
        for t in r["timing"]:
            L.append(f"| {t['n']} | {t['kernel']} | {t['direction_s']:.4f} |")
        s = r["run_setup"]
        L += ["", f"Effect on a run: correlated Gaussian target, d = {s['d']}, "
              f"n = {s['n']} particles, {s['steps']} AdaGrad steps (eps = 0.05); "
              "max |mean error| / sd, median |sd ratio - 1|, "
              "relative Frobenius error of the covariance:", "",
              "| kernel | features | mean err (sd) | sd err | cov rel. err |",
              "| --- | --- | ---: | ---: | ---: |"]
        for u in r["runs"]:
            L.append(f"| {u['kernel']} | {u['features']} | {u['mean_err_sd']:.3f} | "
                     f"{u['sd_err']:.3f} | "
                     f"{u['cov_rel_err']:.3f} |")
        L.append("")
    L += ["Raw results (JSON lines):", "", "```"]
    for key in ("particles", "data"):
        L += [json.dumps(r) for r in res.get(key, [])]
    for pair in res.get("overhead", []):
        L += [json.dumps(r) for r in pair]
    if "rff" in res:
        L.append(json.dumps(res["rff"]))
    L += ["```", ""]
    with open(os.path.join(HERE, "SCALE.md"), "w") as f:
        f.write("\n".join(L))


def plot(res: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ok = lambda r: "error" not in r and "skipped" not in r  # noqa: E731
    for eng in PARTICLE_ENGINES:
        pts = sorted((r["n"], r["steps_per_s"], r["peak_rss_mib"]) for r in res.get("particles", [])
                     if r["engine"] == eng and ok(r))
        if pts:
            n, s, m = zip(*pts)
            axes[0].plot(n, s, "o-", label=eng)
            axes[1].plot(n, m, "o-", label=eng)
    for eng in DATA_ENGINES:
        for sub in _data_modes(eng):
            pts = sorted((r["rows"], r["steps_per_s"]) for r in res.get("data", [])
                         if r["engine"] == eng and r.get("subsample") == sub and ok(r))
            if pts:
                N, s = zip(*pts)
                axes[2].plot(N, s, "o-" if sub is None else "s--",
                             label=f"{eng} ({_data_label(eng, sub)})")
    for ax, xl, yl, t in ((axes[0], "particles n", "steps / s", "speed vs particles (1,000 rows)"),
                          (axes[1], "particles n", "peak RSS (MiB)", "peak memory vs particles"),
                          (axes[2], "data rows N", "steps / s", "speed vs data (100 particles)")):
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel(xl), ax.set_ylabel(yl)
        ax.set_title(t, fontsize=10), ax.grid(True, which="both", alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "scale.png"), dpi=80)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke run: few, small points")
    ap.add_argument("--only", default="particles,data,overhead,rff")
    ap.add_argument("--merge",
                    help="JSON of an earlier run (--save): sections not rerun come from it")
    ap.add_argument("--save", help="write this run's results (merged) as JSON here")
    a = ap.parse_args()
    cfg = QUICK if a.quick else FULL
    parts = a.only.split(",")
    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    res: dict = {}
    if a.merge:
        with open(a.merge) as f:
            res = {k: v for k, v in json.load(f).items() if k not in parts}
    import importlib.util
    global PARTICLE_ENGINES, DATA_ENGINES
    if importlib.util.find_spec("blackjax") is None:   # optional: pip install -e '.[bench]'
        print("blackjax not installed: left out", flush=True)
        PARTICLE_ENGINES = tuple(e for e in PARTICLE_ENGINES if e != "BlackJAX")
        DATA_ENGINES = tuple(e for e in DATA_ENGINES if e != "BlackJAX")
    if "particles" in parts:
        res["particles"] = [r for eng in PARTICLE_ENGINES
                            for r in sweep(eng, cfg["particles"], 1000)]
    if "data" in parts:
        res["data"] = []
        for eng in DATA_ENGINES:
            for sub in _data_modes(eng):
                res["data"] += sweep_rows(eng, cfg["rows"], sub)
    if "overhead" in parts:
        res["overhead"] = []
        for n, rows, steps in cfg["overhead"]:
            pair = [spawn({"kind": "fit", "engine": e, "n": n, "rows": rows, "subsample": None,
                           "steps": steps}) for e in ("SVGD", "hand")]
            print(json.dumps(pair), flush=True)
            res["overhead"].append(pair)
    if "rff" in parts:
        res["rff"] = spawn({"kind": "rff", "quick": a.quick})
        print(json.dumps(res["rff"]), flush=True)
    load = (load0, os.getloadavg()[0])
    if a.save:
        with open(a.save, "w") as f:
            json.dump(res, f)
    merged = [k for k in ("particles", "data", "overhead", "rff") if k in res and k not in parts]
    write_report(res, cfg, load, time.perf_counter() - t_start, a.quick, merged)
    plot(res)


def sweep_rows(engine: str, Ns, subsample) -> list[dict]:
    out = []
    for N in Ns:
        n = 100
        steps = steps_for(n, N if subsample is None else subsample)
        if engine == "SteinVI" and subsample is not None:
            # measured: 200 steps at N = 10^4 took > 150 s (SteinVI's per-pair keys make every
            # pair's gradient draw its own mini-batch), so few steps here
            steps = 10
        res = spawn({"kind": "fit", "engine": engine, "n": n, "rows": N, "subsample": subsample,
                     "steps": steps})
        print(json.dumps(res), flush=True)
        out.append(res)
        if "error" in res or res["process_s"] > CAP_S:
            break
    return out


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        main()
