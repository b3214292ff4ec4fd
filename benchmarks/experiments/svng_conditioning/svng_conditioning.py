"""SVNG vs SVGD on an ill-conditioned Bayesian logistic regression: steps to a fixed accuracy.

Issue 5's criterion: "SVNG converges in fewer steps than SVGD on an ill-conditioned Bayesian
logistic regression (condition number >= 100)". Set-up:

* data: ``N = 300`` rows, ``D = 6`` features drawn from N(0, C) with AR(1) correlation
  ``C_ij = 0.97^|i-j|`` (strongly correlated, so the posterior is elongated along directions
  that are not the coordinate axes), labels from a logistic model with w_true ~ N(0, I);
  model ``w ~ N(0, 1)^D``, ``y ~ Bernoulli(logits = X w)``.
* reference: one long NUTS chain (1,000 warm-up, 20,000 draws); the condition number is that
  of the reference covariance (and, for comparison, of the negative Hessian of the log density
  at the reference mean).
* accuracy, measured every ``EVERY`` steps in the reference's whitened coordinates
  ``u = L^{-1} (w - mean)`` (``L L^T`` = reference covariance), so that an error along the
  narrow direction counts as much as one along the wide direction:
  - ``mean error``: ``|mean of the particles in u|`` (Mahalanobis distance of the particle mean
    from the reference mean, in posterior sds);
  - ``energy distance`` of the whitened particles to 2,000 whitened reference draws.
  "Steps to target" is the first checkpoint from which the measure stays at or below the target
  until the end of the run (so a run that passes the target and drifts off again does not count).
* methods, each with its own small grid of step sizes, 50 particles, ``init_to_uniform``,
  three seeds; the best step size is the one with the smallest median steps to target:
  - SVGD with plain steps ``x += eps * phi`` (``optax.sgd``),
  - SVGD with the library's default optimizer (the SVGD reference code's AdaGrad),
  - SVNG with its default metric (running average of the observed information, which for
    logistic regression is the Fisher information the paper uses, + 1e-2 I), plain steps.
* cost: SVGD takes ``n`` gradients per step; SVNG takes ``n`` gradients and ``n`` Hessians per
  step. A Hessian is counted as ``D`` gradient evaluations (forward-over-reverse), so an SVNG
  step is ``n (1 + D)`` gradient-equivalents; wall times are measured on this machine.

Run ``python -m benchmarks.experiments.svng_conditioning.svng_conditioning`` (about 2-4 minutes
on 2 CPU cores); it prints the table and writes ``SVNG_CONDITIONING.md`` next to this script.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import MCMC, NUTS

import numpyro_gflow as gf
from numpyro_gflow.datasets.models import correlated_logistic_data, correlated_logistic_model
from numpyro_gflow.diagnostics import energy_distance
from numpyro_gflow.core.kernels import IMQKernel

N_DATA, DIM, RHO = 300, 6, 0.97
NUM_PARTICLES = 50
EVERY = 10
MEAN_TARGET = 0.2      # Mahalanobis error of the particle mean, in posterior sds
OUT = Path(__file__).with_name("SVNG_CONDITIONING.md")


make_data = correlated_logistic_data    # numpyro_gflow.datasets.models (defaults as above)
model = correlated_logistic_model


def nuts_reference(X, y, num_samples: int = 20_000, seed: int = 1) -> np.ndarray:
    mcmc = MCMC(NUTS(model), num_warmup=1000, num_samples=num_samples, progress_bar=False)
    mcmc.run(jax.random.key(seed), X, y)
    return np.asarray(mcmc.get_samples()["w"], np.float64)


class Accuracy:
    """Whitened mean error and energy distance against a reference sample."""

    def __init__(self, ref: np.ndarray, num_ed: int = 2000):
        self.mean = ref.mean(0)
        self.cov = np.cov(ref.T)
        self.chol = np.linalg.cholesky(self.cov)
        thin = ref[:: max(1, len(ref) // num_ed)][:num_ed]
        self.ref_u = self.whiten(thin)
        # what 50 exact (NUTS) draws score against the same reference
        other = ref[1:: max(1, len(ref) // num_ed)][:NUM_PARTICLES]
        self.ed_baseline = energy_distance(self.whiten(other), self.ref_u, scale_by=None)

    def whiten(self, w):
        return np.linalg.solve(self.chol, (np.asarray(w, np.float64) - self.mean).T).T

    def condition_number(self) -> float:
        ev = np.linalg.eigvalsh(self.cov)
        return float(ev[-1] / ev[0])

    def __call__(self, w):
        u = self.whiten(w)
        return float(np.linalg.norm(u.mean(0))), energy_distance(u, self.ref_u, scale_by=None)


def hessian_condition_number(X, y, at) -> float:
    from numpyro.infer.util import log_density
    f = lambda w: log_density(model, (X, y), {}, {"w": w})[0]  # noqa: E731
    ev = np.linalg.eigvalsh(-np.asarray(jax.hessian(f)(jnp.asarray(at, jnp.float32)), np.float64))
    return float(ev[-1] / ev[0])


def curve(engine, X, y, acc: Accuracy, seed: int, num_steps: int):
    """(steps, mean errors, energy distances) every EVERY steps (the run continued in chunks)."""
    key = jax.random.key(seed)
    res = engine.run(key, EVERY, X, y, progress_bar=False)
    steps, errs, eds = [], [], []
    for s in range(EVERY, num_steps + 1, EVERY):
        if s > EVERY:
            try:
                res = engine.run(key, EVERY, X, y, progress_bar=False, init_state=res.state)
            except FloatingPointError:   # particles became non-finite
                break
        w = np.asarray(res.get_samples()["w"])
        e, ed = acc(w) if np.all(np.isfinite(w)) else (np.inf, np.inf)
        steps.append(s), errs.append(e), eds.append(ed)
        if not np.isfinite(e):
            break
    if len(steps) < num_steps // EVERY:       # diverged: pad
        pad = list(range(len(steps) * EVERY + EVERY, num_steps + 1, EVERY))
        steps += pad
        errs += [np.inf] * len(pad)
        eds += [np.inf] * len(pad)
    return np.array(steps), np.array(errs), np.array(eds)


def ms_per_step(engine, X, y, num_steps: int = 200) -> float:
    """Wall time of one straight compiled run (compiled beforehand), per step."""
    try:
        engine.run(jax.random.key(0), num_steps, X, y, progress_bar=False)
    except FloatingPointError:
        pass
    t0 = time.perf_counter()
    try:
        jax.block_until_ready(engine.run(jax.random.key(0), num_steps, X, y,
                                         progress_bar=False).state.particles)
    except FloatingPointError:
        pass
    return 1e3 * (time.perf_counter() - t0) / num_steps


def steps_to(steps, values, target):
    """First checkpoint from which ``values`` stays <= target to the end; None if never."""
    ok = values <= target
    if not ok[-1]:
        return None
    bad = np.nonzero(~ok)[0]
    return int(steps[0] if len(bad) == 0 else steps[bad[-1] + 1])


def methods(dim: int):
    """name -> (engine factory taking a step size, step grid, max steps, grad-equivalents/step)."""
    n = NUM_PARTICLES
    return {
        "SVGD (plain steps)": (
            lambda eps: gf.SVGD(model, num_particles=n, optimizer=optax.sgd(eps)),
            (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07), 1500, n),
        "SVGD (AdaGrad, library default)": (
            lambda eps: gf.SVGD(model, num_particles=n, step_size=eps),
            (0.003, 0.01, 0.02, 0.03, 0.1), 1500, n),
        "SVNG (Fisher metric, plain steps)": (
            lambda eps: gf.SVNG(model, num_particles=n, step_size=eps),
            (0.25, 0.5, 1.0, 2.0, 4.0), 400, n * (1 + dim)),
        "SVNG (Fisher metric, IMQ kernel)": (
            lambda eps: gf.SVNG(model, num_particles=n, step_size=eps,
                                kernel=IMQKernel(bandwidth="median")),
            (1.0, 2.0), 400, n * (1 + dim)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))

    X, y = make_data()
    t0 = time.perf_counter()
    ref = nuts_reference(X, y)
    acc = Accuracy(ref)
    cond = acc.condition_number()
    cond_h = hessian_condition_number(X, y, acc.mean)
    print(f"reference: NUTS 20,000 draws in {time.perf_counter() - t0:.1f}s; posterior covariance "
          f"condition number {cond:.0f} (Hessian at the mean: {cond_h:.0f}); ED baseline of "
          f"{NUM_PARTICLES} exact draws {acc.ed_baseline:.4f}")
    ed_target = 2 * acc.ed_baseline

    rows, best = [], {}
    for name, (make, grid, max_steps, grads_per_step) in methods(DIM).items():
        for eps in grid:
            eng = make(eps)
            per_seed = [curve(eng, X, y, acc, s, max_steps) for s in seeds]
            to_mean = [steps_to(st, e, MEAN_TARGET) for st, e, _ in per_seed]
            to_ed = [steps_to(st, d, ed_target) for st, _, d in per_seed]
            final_err = float(np.median([e[-1] for _, e, _ in per_seed]))
            final_ed = float(np.median([d[-1] for _, _, d in per_seed]))
            sec = ms_per_step(eng, X, y) / 1e3
            med = lambda v: None if any(x is None for x in v) else float(np.median(v))  # noqa: E731
            row = dict(method=name, eps=eps, max_steps=max_steps, to_mean=med(to_mean),
                       to_ed=med(to_ed), to_mean_all=to_mean, to_ed_all=to_ed,
                       final_err=final_err, final_ed=final_ed, ms_per_step=1e3 * sec,
                       grads_per_step=grads_per_step)
            rows.append(row)
            print(f"{name:36s} eps={eps:<5} steps to mean err<={MEAN_TARGET}: {to_mean}  "
                  f"to ED<={ed_target:.4f}: {to_ed}  final err {final_err:.3f} ED {final_ed:.4f}  "
                  f"{1e3 * sec:.2f} ms/step", flush=True)
            key = (row["to_mean"] if row["to_mean"] is not None else np.inf, final_err)
            if name not in best or key < best[name][0]:
                best[name] = (key, row)

    lines = table(rows, best, cond, cond_h, acc.ed_baseline, ed_target, seeds)
    print("\n".join(lines))
    if not args.no_write:
        OUT.write_text("\n".join(lines) + "\n")
        print(f"wrote {OUT}")


NOTES = """
## Notes

* Per-step wall times come from one straight compiled run per configuration on a 2-core machine
  shared with other jobs; the same engine measured between ~1 and ~16 ms/step across runs, so
  read the gradient-equivalents column, not the ms column, for cost.
* SVNG's best step size lies at the edge of its grid (the largest step tried); a larger step
  might be faster still. SVGD's grid brackets its best step: the next plain step (0.07) and
  AdaGrad above 0.01 stall or diverge (the narrow direction oscillates).
* Diagnosis of the earlier "SVNG spreads out" finding: the SVNG direction was checked against
  the paper's formula. With a constant metric G and every eigenpair of the Nystrom square root
  kept, it equals G^{-1} times the SVGD direction to float precision
  (tests/engines/test_svng.py), so sign, transposition and the divergence term are right; no
  bug was found in mirror.py. On this
  problem SVNG from `init_to_uniform` contracts to the posterior with either the exact
  posterior precision or the running Fisher metric. The base kernel is Euclidean with the
  median bandwidth, as in the authors' logistic-regression code (not measured in the metric).
* The IMQ kernel (as in the authors' constrained experiments) gives SVNG a clearly lower final
  energy distance than the RBF default at the same speed.
"""


def _fmt(v):
    return "not reached" if v is None else f"{v:.0f}"


def table(rows, best, cond, cond_h, ed_base, ed_target, seeds):
    lines = [
        "# SVNG vs SVGD on an ill-conditioned Bayesian logistic regression",
        "",
        "Written by `python -m benchmarks.experiments.svng_conditioning.svng_conditioning` "
        "(see its docstring for the set-up).",
        "",
        f"Logistic regression, N = {N_DATA}, D = {DIM}, AR(1)-correlated features (rho = {RHO}), "
        f"w ~ N(0, 1)^D. Posterior covariance condition number **{cond:.0f}** (long NUTS run; "
        f"negative Hessian of the log density at the posterior mean: {cond_h:.0f}). "
        f"{NUM_PARTICLES} particles from `init_to_uniform`, seeds {seeds}, accuracy measured "
        f"every {EVERY} steps in the reference's whitened coordinates. Targets: Mahalanobis error "
        f"of the particle mean <= {MEAN_TARGET} posterior sd; energy distance <= {ed_target:.4f} "
        f"(twice that of {NUM_PARTICLES} exact NUTS draws, {ed_base:.4f}). Steps to target = first "
        "checkpoint from which the measure stays below the target to the end of the run; "
        "median over seeds (\"not reached\" if any seed misses it).",
        "",
        "## Best step size per method",
        "",
        "| method | best step | steps to mean target | gradient-equivalents | ms / step "
        "| steps to ED target | final mean err | final ED |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (_, r) in best.items():
        ge = None if r["to_mean"] is None else r["to_mean"] * r["grads_per_step"]
        lines.append(f"| {name} | {r['eps']} | {_fmt(r['to_mean'])} | {_fmt(ge)} | "
                     f"{r['ms_per_step']:.2f} | {_fmt(r['to_ed'])} | "
                     f"{r['final_err']:.3f} (at {r['max_steps']}) | {r['final_ed']:.4f} |")
    lines += ["", "## All step sizes", "",
              "| method | step | steps to mean target (per seed) | steps to ED target (per seed) "
              "| final mean err | final ED | ms / step |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['eps']} | {r['to_mean_all']} | {r['to_ed_all']} | "
                     f"{r['final_err']:.3f} | {r['final_ed']:.4f} | {r['ms_per_step']:.2f} |")
    lines += ["", "Gradient-equivalents: SVGD n per step; SVNG n (1 + D) per step "
              "(n gradients, n Hessians counted as D gradients each)."]
    lines += NOTES.rstrip().splitlines()
    return lines


if __name__ == "__main__":
    main()
