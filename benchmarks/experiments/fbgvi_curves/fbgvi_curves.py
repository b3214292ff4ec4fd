"""FB-GVI against BW-SGD and NumPyro SVI (AutoMultivariateNormal): ELBO per unit of work,
over a step-size grid, deterministic and stochastic.

    python -m benchmarks.experiments.fbgvi_curves.fbgvi_curves [--quick] [--no-note]

Target: Bayesian logistic regression on the breast-cancer data
(``numpyro_gflow.datasets.load_breast_cancer()``: 569 rows, 30 standardised features), one
latent vector ``theta`` = (intercept, 30 weights) with prior N(0, 5^2) on the intercept and
N(0, 1) on the weights: d = 31, strongly log-concave (the prior gives curvature >= 1/25) and
not Gaussian.

Methods (``float32``, CPU), all started from the engine's own initial state (``FBGVI.init``: MAP
by 200 Adam steps, isotropic covariance ``(d / tr H) I``, ``beta`` and ``alpha`` by power
iteration), with step ``h = c / beta`` for ``c`` in ``H_MULTS``:

* ``FB-GVI`` -- ``numpyro_gflow.core.fbgvi.step`` (the engine's pure step; the script checks
  that its loop reproduces ``FBGVI.run``);
* ``BW-SGD`` -- Lambert et al. (2022): the forward step alone with the entropy's gradient
  explicit, ``m <- m - h E[grad V]``, ``S <- M S M``, ``M = I - h (E[grad^2 V] - S^{-1})``
  (``numpyro_gflow.core.fbgvi.bw_sgd_step``: the same draws, random stream, Hessian estimator
  and step schedule as ``fbgvi.step``; only the entropy step differs);

each in three variants:

* ``det`` -- 100 fixed antithetic moment-matched draws, exact Hessian (d HVPs per draw);
* ``det-stein`` -- the same draws, the first-order Stein Hessian ``C^{-T} E[u grad V^T]``
  (gradients only);
* ``stoch`` -- the paper's stochastic variant: one fresh draw per step, exact Hessian at it, the
  step ``h_k = h / (1 + alpha h k)``; ``NUM_SEEDS`` independent runs (vmapped).

And ``SVI lr=...``: NumPyro SVI with ``AutoMultivariateNormal`` (its defaults: prior median, scale
0.1), ``Trace_ELBO`` with one particle, Adam (1e-3 is Adam's default step), ``NUM_SVI_SEEDS`` runs.

Work: one unit = one gradient of ``log p`` at one point or one Hessian-vector product (HVP); the
GVI methods are charged their initialisation (200 gradients + d + 31 + 101 HVPs); SVI's
one-particle step is one gradient. ELBO: exact Gaussian entropy + Monte Carlo energy over fresh
standard normal draws at every checkpoint (``NUM_ELBO_DET`` for a deterministic run,
``NUM_ELBO_STOCH`` per seed); a stochastic cell is the mean over seeds with the standard error
across seeds (which includes the Monte Carlo error).

Outputs: markdown tables on stdout and in ``FBGVI_CURVES.md``; the plot ``fbgvi_curves.png``
(both next to this script).
"""

from __future__ import annotations

import os

# LAPACK's eigh (FB-GVI's JKO step, once per step) comes from scipy's OpenBLAS; with its own
# threads on a shared 2-core machine it ran 100-300x slower (15 ms instead of 50 us for 31 x 31).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import AutoMultivariateNormal  # noqa: E402
from numpyro.infer.util import potential_energy  # noqa: E402

import numpyro_gflow as gf  # noqa: E402
from numpyro_gflow.core import fbgvi  # noqa: E402
from numpyro_gflow.datasets import load_breast_cancer  # noqa: E402
from numpyro_gflow.datasets.models import breast_cancer_theta_model  # noqa: E402

HERE = Path(__file__).resolve().parent
PLOT = HERE / "fbgvi_curves.png"
NOTE = HERE / "FBGVI_CURVES.md"

H_MULTS = (0.25, 0.5, 1.0, 1.5, 2.0, 4.0)     # h = c / beta
VARIANTS = {"det": ("exact", False), "det-stein": ("stein", False), "stoch": ("exact", True)}
SVI_LRS = (1e-3, 1e-2)
NUM_SEEDS = 8
NUM_SVI_SEEDS = 4
NUM_ELBO_DET = 10_000
NUM_ELBO_STOCH = 1000
MAP_STEPS = 200                 # FBGVI's default
# numpyro_gflow.core.numerics.curvature / smallest_curvature defaults
POWER_ITERATIONS = (30, 100)


# ---------------------------------------------------------------------------- data, model
def load_data():
    """(X (569, 30) standardised, y (569,) 0/1), both float32."""
    X, y = load_breast_cancer()
    return jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)


model = breast_cancer_theta_model   # numpyro_gflow.datasets.models


# ---------------------------------------------------------------------------- BW-SGD
bw_sgd_step = fbgvi.bw_sgd_step   # BW-SGD, the paper's baseline (in the core)


def stack(states):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def vmapped_loop(step_fn):
    """``advance(states, n)``: ``n`` steps of ``step_fn`` for each row of a stacked state."""
    one = lambda s, n: lax.fori_loop(0, n, lambda i, s: step_fn(s), s)  # noqa: E731
    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def fmt_b(b):
    return f"{b:.0e}".replace("e+0", "e")


def cell(run, b):
    """Mean ELBO, its SE and the number of diverged seeds at the last checkpoint within budget b
    (None if even the start costs more)."""
    ok = run["cost"] <= b * (1 + 1e-9)
    if not ok.any():
        return None
    i = np.nonzero(ok)[0][-1]
    e, se = run["elbo"][i], run["se"][i]
    fin = np.isfinite(e)
    div = int((~fin).sum())
    if not fin.any():
        return np.nan, np.nan, div, int(run["steps"][i])
    if e.size == 1:
        return float(e[0]), float(se[0]), div, int(run["steps"][i])
    ef = e[fin]
    return (float(ef.mean()), float(ef.std(ddof=1) / np.sqrt(ef.size)) if ef.size > 1 else np.nan,
            div, int(run["steps"][i]))


def fmt_cell(c, with_se=True):
    if c is None:
        return "—"
    e, se, div, _ = c
    if not np.isfinite(e):
        return "diverged"
    s = f"{e:.2f}" + (f" ± {se:.2f}" if with_se and np.isfinite(se) else "")
    return s + (f" ({div} div)" if div else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="budget 1e5 instead of 1e6")
    parser.add_argument("--no-note", action="store_true", help="do not rewrite FBGVI_CURVES.md")
    opts = parser.parse_args(argv)
    t_start = time.perf_counter()

    X, y = load_data()
    args = (X, y)
    d = X.shape[1] + 1
    V = lambda z: potential_energy(model, args, {}, {"theta": z})  # noqa: E731
    grad_v = jax.grad(V)
    score_fn = lambda x, key: jax.vmap(jax.value_and_grad(lambda z: -V(z)))(x)  # noqa: E731
    hvp_fn = lambda x, v, key: jax.jvp(grad_v, (x,), (v,))[1]  # noqa: E731

    max_cost = 1e5 if opts.quick else 1e6
    budgets = [1e3, 1e4, 1e5] + ([] if opts.quick else [1e6])
    cost_grid = np.unique(np.concatenate([np.geomspace(1e2, max_cost, 41), budgets]))
    entropy_const = 0.5 * d * (1 + jnp.log(2 * jnp.pi))

    def make_elbo(n):
        def one(m, L, key):
            eps = jax.random.normal(key, (n, d))
            terms = -jax.vmap(V)(m + eps @ L.T)
            ent = entropy_const + jnp.sum(jnp.log(jnp.abs(jnp.diag(L))))
            return jnp.mean(terms) + ent, jnp.std(terms) / jnp.sqrt(n)
        return jax.jit(jax.vmap(one))

    elbo_det, elbo_sto = make_elbo(NUM_ELBO_DET), make_elbo(NUM_ELBO_STOCH)
    chol = jax.jit(jax.vmap(lambda S: jnp.linalg.cholesky(0.5 * (S + S.T))))
    eval_key = [jax.random.key(2024)]

    def evaluate(m, L):      # (S, d), (S, d, d) -> numpy (S,), (S,)
        eval_key[0], k = jax.random.split(eval_key[0])
        f = elbo_det if m.shape[0] == 1 else elbo_sto
        e, se = f(m, L, jax.random.split(k, m.shape[0]))
        e = np.where(np.isfinite(np.asarray(e)), np.asarray(e), np.nan)
        return e, np.asarray(se)

    # ------------------------------------------------------------------ the common start
    key = jax.random.PRNGKey(0)     # the state run(key, ...) starts from
    # the paper's iteration in the unconstrained space (precondition=None): its core states
    run_starts = {v: gf.FBGVI(model, hessian=hess, stochastic=sto,
                              precondition=None).init_state(key, *args)
                  for v, (hess, sto) in VARIANTS.items()}
    starts = {v: s.core for v, s in run_starts.items()}
    t0 = time.perf_counter()
    jax.block_until_ready(gf.FBGVI(model, precondition=None).init_state(key, *args).core)
    t_init = time.perf_counter() - t0
    s0 = starts["det"]
    for s in starts.values():
        assert np.allclose(s.mean, s0.mean) and np.allclose(s.cov, s0.cov)
    h, alpha = float(s0.step_size), float(s0.alpha)
    B = s0.draws.shape[0]
    init_cost = MAP_STEPS + d + POWER_ITERATIONS[0] + 1 + POWER_ITERATIONS[1] + 1
    per_step = {"det": B * (1 + d), "det-stein": B, "stoch": 1 + d}
    print(f"d = {d}; start: h0 = 1/beta = {h:.4g} (beta = {1 / h:.4g}), alpha = {alpha:.4g}, "
          f"cov = {float(s0.cov[0, 0]):.4g} I; init cost {init_cost}, {t_init:.2f} s")

    # our loop == the engine's loop
    n_check = 20
    ours = vmapped_loop(lambda s: fbgvi.step(s, score_fn, hvp_fn, "exact", False)[0])(
        stack([s0]), n_check)
    theirs = gf.FBGVI(model, precondition=None).run(jax.random.key(0), n_check, *args,
                                                    progress_bar=False,
                                                    init_state=run_starts["det"])
    diff = float(jnp.max(jnp.abs(ours.cov[0] - theirs.state.cov))
                 / jnp.max(jnp.abs(theirs.state.cov)))
    print(f"check: own loop vs FBGVI.run after {n_check} steps: max rel cov diff {diff:.1e}")
    assert diff < 1e-4, diff

    # ------------------------------------------------------------------ GVI runs
    runs, per_step_us = {}, {}
    for variant, (hess, sto) in VARIANTS.items():
        n_seeds = NUM_SEEDS if sto else 1
        g = per_step[variant]
        max_steps = int((max_cost - init_cost) // g)
        steps = np.floor((cost_grid - init_cost) / g).astype(int)
        steps = np.unique(np.concatenate([[0], steps[(steps >= 0) & (steps <= max_steps)]]))
        for method in ("FB-GVI", "BW-SGD"):
            if method == "FB-GVI":
                fn = lambda s, hess=hess, sto=sto: fbgvi.step(s, score_fn, hvp_fn, hess, sto)[0]  # noqa: E731
            else:
                fn = lambda s, hess=hess, sto=sto: bw_sgd_step(s, score_fn, hvp_fn, hess, sto)  # noqa: E731
            advance = vmapped_loop(fn)
            for c in H_MULTS:
                t0 = time.perf_counter()
                state = stack([starts[variant]._replace(
                    step_size=jnp.asarray(c * h, s0.cov.dtype),
                    rng_key=jax.random.fold_in(jax.random.key(11), i)) for i in range(n_seeds)])
                E, SE, done = [], [], 0
                for k in steps:
                    state = advance(state, int(k - done))
                    done = int(k)
                    e, se = evaluate(state.mean, chol(state.cov))
                    E.append(e)
                    SE.append(se)
                runs[(method, variant, c)] = dict(steps=steps, cost=init_cost + steps * g,
                                                  elbo=np.array(E), se=np.array(SE))
                if c == 1.0:
                    n_t = min(max_steps, 300 if sto else max(20, int(2e5 // g)))
                    jax.block_until_ready(advance(state, 1))
                    t1 = time.perf_counter()
                    jax.block_until_ready(advance(state, n_t))
                    per_step_us[(method, variant)] = ((time.perf_counter() - t1) / n_t / n_seeds
                                                      * 1e6)
                end = cell(runs[(method, variant, c)], max_cost)
                print(f"{method} {variant:<9} h = {c:<4g}/beta: {max_steps:>6} steps, "
                      f"end {fmt_cell(end)} ({time.perf_counter() - t0:.1f} s)", flush=True)

    # ------------------------------------------------------------------ SVI AutoMVN
    guide = AutoMultivariateNormal(model)
    steps = np.unique(np.concatenate([[0], np.floor(cost_grid).astype(int)]))
    for lr in SVI_LRS:
        t0 = time.perf_counter()
        svi = SVI(model, guide, optax.adam(lr), Trace_ELBO())
        state = stack([svi.init(jax.random.key(100 + i), *args) for i in range(NUM_SVI_SEEDS)])
        advance = vmapped_loop(lambda s, svi=svi: svi.update(s, *args)[0])
        params = jax.jit(jax.vmap(svi.get_params))
        E, SE, done = [], [], 0
        for k in steps:
            state = advance(state, int(k - done))
            done = int(k)
            p = params(state)
            e, se = evaluate(p["auto_loc"], p["auto_scale_tril"])
            E.append(e)
            SE.append(se)
        runs[("SVI", f"lr={lr:g}", None)] = dict(steps=steps, cost=steps.astype(float),
                                                 elbo=np.array(E), se=np.array(SE))
        end = cell(runs[("SVI", f"lr={lr:g}", None)], max_cost)
        print(f"SVI AutoMVN Adam lr={lr:g}: end {fmt_cell(end)} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)

    report = tables(runs, budgets, per_step, per_step_us, init_cost, B)
    print("\n" + report)
    plot(runs, budgets, d, max_cost)
    if not opts.no_note and not opts.quick:
        NOTE.write_text(_note(d, h, alpha, B, init_cost, t_init, diff, report))
        print(f"wrote {NOTE}")
    print(f"total {time.perf_counter() - t_start:.0f} s")


# ---------------------------------------------------------------------------- tables, plot
def _stable(run, tol=1.0):
    """No diverged seed and the seed-mean ELBO never below its start by more than ``tol`` nats,
    over the whole run."""
    e = run["elbo"]
    if not np.isfinite(e).all():
        return False
    mean = e.mean(1)
    return bool(np.min(mean[1:]) >= mean[0] - tol)


def _best(runs, method, variant, b, stable_only=False):
    """Best-of-grid over step sizes at budget b, among cells without diverged seeds (and, with
    ``stable_only``, among step sizes whose whole run is ``_stable``)."""
    best = None
    for (m, v, c), run in runs.items():
        if m != method or v != variant or (stable_only and not _stable(run)):
            continue
        r = cell(run, b)
        if r is None or r[2] or not np.isfinite(r[0]):
            continue
        if best is None or r[0] > best[1][0]:
            best = (c, r)
    return best


def tables(runs, budgets, per_step, per_step_us, init_cost, B):
    out = []
    bh = " | ".join(fmt_b(b) for b in budgets)
    for variant in VARIANTS:
        seeds = "mean ± SE over %d seeds" % NUM_SEEDS if VARIANTS[variant][1] else \
            "± Monte Carlo SE of %d fresh draws" % NUM_ELBO_DET
        us = ", ".join(f"{m} {per_step_us[(m, variant)]:.0f} us" for m in ("FB-GVI", "BW-SGD"))
        out.append(f"### `{variant}`: {per_step[variant]} gradients + HVPs per step "
                   f"({us} per step; {seeds})\n")
        out.append(f"| method | h · beta | {bh} | lowest ELBO on the way (step) |")
        out.append("|---|---|" + "---|" * len(budgets) + "---|")
        for method in ("FB-GVI", "BW-SGD"):
            for c in H_MULTS:
                run = runs[(method, variant, c)]
                cells = [fmt_cell(cell(run, b)) for b in budgets]
                with np.errstate(all="ignore"):
                    mean = np.array([np.nanmean(e) if np.isfinite(e).any() else np.nan
                                     for e in run["elbo"]])
                start = mean[0]
                if np.isfinite(mean[1:]).any():
                    i = int(np.nanargmin(mean[1:])) + 1
                    low = (f"{mean[i]:.1f} ({run['steps'][i]})" if mean[i] < start
                           else "— (monotone enough)")
                else:
                    low = "diverged"
                out.append(f"| {method} | {c:g} | " + " | ".join(cells) + f" | {low} |")
        for method in ("FB-GVI", "BW-SGD"):
            ok = [f"{c:g}" for c in H_MULTS if _stable(runs[(method, variant, c)])]
            out.append(f"* {method} stable at h · beta in {{{', '.join(ok)}}} "
                       "(no diverged seed, never more than 1 nat below the start)")
        out.append("")
    start = runs[("FB-GVI", "det", H_MULTS[0])]["elbo"][0, 0]
    out.insert(0, f"Start Gaussian (all GVI runs): ELBO {start:.2f}; GVI costs include the "
               f"{init_cost}-unit initialisation.\n")

    # best of grid, FB-GVI vs BW-SGD, per variant
    for stable_only in (False, True):
        which = ("step sizes stable over the whole run only" if stable_only
                 else "cells with a diverged seed excluded")
        out.append(f"### Best of the step-size grid, per budget ({which}; h · beta of the best in "
                   "brackets)\n")
        head = ("| budget | "
                + " | ".join(f"FB-GVI {v} | BW-SGD {v} | FB − BW {v}" for v in VARIANTS) + " |")
        out += [head, "|---|" + "---|" * (3 * len(VARIANTS))]
        for b in budgets:
            row = [fmt_b(b)]
            for v in VARIANTS:
                fb = _best(runs, "FB-GVI", v, b, stable_only)
                bw = _best(runs, "BW-SGD", v, b, stable_only)
                for x in (fb, bw):
                    row.append("—" if x is None else f"{x[1][0]:.2f} ({x[0]:g})")
                if fb is None or bw is None:
                    row.append("—")
                else:
                    row.append(f"{fb[1][0] - bw[1][0]:+.2f} ± {np.hypot(fb[1][1], bw[1][1]):.2f}")
            out.append("| " + " | ".join(row) + " |")
        out.append("")

    # against SVI AutoMVN at equal gradient evaluations
    out.append("### Against NumPyro SVI (AutoMultivariateNormal, Adam, one-particle Trace_ELBO, "
               f"mean ± SE over {NUM_SVI_SEEDS} seeds) at equal gradient evaluations\n")
    svis = [k for k in runs if k[0] == "SVI"]
    out.append("| budget | " + " | ".join(f"SVI {k[1]}" for k in svis)
               + " | FB-GVI det-stein, h = 1/beta | FB-GVI det-stein best h"
                 " | FB-GVI stoch, h = 1/beta"
                 " | FB-GVI det, h = 1/beta |")
    out.append("|---|" + "---|" * (len(svis) + 4))
    for b in budgets:
        row = [fmt_b(b)] + [fmt_cell(cell(runs[k], b)) for k in svis]
        row.append(fmt_cell(cell(runs[("FB-GVI", "det-stein", 1.0)], b)))
        x = _best(runs, "FB-GVI", "det-stein", b)
        row.append("—" if x is None else f"{x[1][0]:.2f} ± {x[1][1]:.2f} ({x[0]:g})")
        row.append(fmt_cell(cell(runs[("FB-GVI", "stoch", 1.0)], b)))
        row.append(fmt_cell(cell(runs[("FB-GVI", "det", 1.0)], b)))
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def plot(runs, budgets, d, max_cost):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with np.errstate(all="ignore"):
        means = {k: np.array([np.nanmean(e) if np.isfinite(e).any() else np.nan for e in r["elbo"]])
                 for k, r in runs.items()}
    top = max(np.nanmax(m) for m in means.values())
    fig, axes = plt.subplots(1, 4, figsize=(22, 5.5), sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, variant in zip(axes, VARIANTS):
        for j, c in enumerate(H_MULTS):
            col = cmap(j / (len(H_MULTS) - 1))
            for method, ls in (("FB-GVI", "-"), ("BW-SGD", "--")):
                r = runs[(method, variant, c)]
                ax.loglog(np.maximum(r["cost"], 1),
                          np.maximum(top - means[(method, variant, c)], 1e-2),
                          color=col, ls=ls, label=f"{method} h={c:g}/β")
        for k in runs:
            if k[0] == "SVI":
                ax.loglog(np.maximum(runs[k]["cost"], 1), np.maximum(top - means[k], 1e-2),
                          color="grey", ls="-" if k[1] == "lr=0.001" else ":",
                          label=f"SVI AutoMVN {k[1]}")
        ax.set_title(f"{variant} (solid FB-GVI, dashed BW-SGD)")
    # envelope: best over the grid per checkpoint cost
    ax = axes[3]
    for variant, col in zip(VARIANTS, ("C0", "C1", "C2")):
        for method, ls in (("FB-GVI", "-"), ("BW-SGD", "--")):
            costs = np.geomspace(runs[(method, variant, 1.0)]["cost"][0], max_cost, 60)
            env = []
            for b in costs:
                x = _best(runs, method, variant, b)
                env.append(np.nan if x is None else top - x[1][0])
            ax.loglog(costs, np.maximum(env, 1e-2), color=col, ls=ls,
                      label=f"{method} {variant} best h")
    for k in runs:
        if k[0] == "SVI":
            ax.loglog(np.maximum(runs[k]["cost"], 1), np.maximum(top - means[k], 1e-2),
                      color="grey", ls="-" if k[1] == "lr=0.001" else ":",
                      label=f"SVI AutoMVN {k[1]}")
    ax.set_title("best of the step-size grid per budget")
    for ax in axes:
        ax.set_xlabel("gradients + HVPs (init included)")
        ax.set_ylim(1e-2, 1e3)
        ax.set_xlim(1e2, max_cost * 1.2)
        ax.grid(alpha=0.3, which="both")
        for b in budgets:
            ax.axvline(b, color="k", lw=0.5, alpha=0.3)
    axes[0].set_ylabel(f"best ELBO seen ({top:.2f}) − ELBO")
    axes[0].legend(fontsize=6, ncol=2)
    axes[3].legend(fontsize=7)
    fig.suptitle(f"Breast-cancer logistic regression (d = {d}): FB-GVI vs BW-SGD vs SVI AutoMVN")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)
    print(f"saved {PLOT}")


def _note(d, h, alpha, B, init_cost, t_init, diff, report):
    return f"""# FB-GVI vs BW-SGD vs SVI AutoMVN: ELBO per unit of work over a step-size grid

Written by `python -m benchmarks.experiments.fbgvi_curves.fbgvi_curves` (plot: `fbgvi_curves.png`).
Machine: {platform.machine()}, 2 shared CPU cores, jax {jax.__version__}, numpyro
{numpyro.__version__}, float32, `OPENBLAS_NUM_THREADS=1`.

**Target.** Bayesian logistic regression on the breast-cancer data (569 rows, 30 standardised
features), `theta` = (intercept, 30 weights), prior N(0, 5^2) on the intercept and N(0, 1) on the
weights: d = {d}, strongly log-concave, not Gaussian. Common start for every GVI run
(`FBGVI.init`: MAP by {MAP_STEPS} Adam steps, then power iteration): beta = {1 / h:.4g}
(h0 = 1/beta = {h:.4g}), alpha = {alpha:.4g} (beta / alpha = {1 / (h * alpha):.0f}),
covariance (d / tr H) I; init {t_init:.1f} s.

**Methods.** `FB-GVI`: the engine's pure step `numpyro_gflow.core.fbgvi.step` (the script's loop
matches `FBGVI.run`: max relative covariance difference {diff:.0e} after 20 steps). `BW-SGD`:
Lambert et al. (2022), `m <- m - h E[grad V]`, `S <- M S M`, `M = I - h (E[grad^2 V] - S^-1)`,
with the same draws, random stream, Hessian estimator and step schedule; only the entropy step
differs (explicit gradient `S^-1` instead of FB-GVI's closed-form JKO step). Variants: `det`
({B} fixed antithetic moment-matched draws, exact Hessian: {B} x (1 + {d}) units per step);
`det-stein` (same draws, Stein Hessian from the gradients: {B} units per step); `stoch` (the
paper's SFB-GVI / stochastic BW-SGD: one fresh draw, exact Hessian at it, 1 + {d} units per
step, `h_k = h / (1 + alpha h k)`, {NUM_SEEDS} seeds). Step `h = c / beta`, c in {H_MULTS}.
`SVI`: NumPyro SVI, `AutoMultivariateNormal` (default start), one-particle `Trace_ELBO`, Adam
at lr 1e-3 (Adam's default) and 1e-2, {NUM_SVI_SEEDS} seeds.

**Counting.** One unit = one gradient of `log p` or one Hessian-vector product at one point
(an exact Hessian is d HVPs per draw; counting an HVP as one gradient favours the exact-Hessian
variants). GVI runs are charged the initialisation ({init_cost} units); SVI one gradient per step.
Each cell is the last checkpoint within the budget; "—": not even the start fits (the `det`
variant's first step costs {B * (1 + d)}).

**ELBO.** Exact Gaussian entropy + Monte Carlo energy over fresh draws at every checkpoint
({NUM_ELBO_DET} per deterministic run, ± its Monte Carlo SE; {NUM_ELBO_STOCH} per seed for the
seeded runs, mean ± SE over seeds). "diverged": non-finite covariance / ELBO.

## Findings (prose written from the run of 2026-11-25; rerunning rewrites the tables, not this)

* **Equal step size h <= 1/beta: the two methods are the same method in effect.** Every
  FB-GVI / BW-SGD pair at h · beta in {{0.25, 0.5, 1}} ends within 0.1 nat (Monte Carlo SE
  0.04-0.05) and differs by at most ~0.3 nat at any budget, in all three variants. This matches the
  linearisation on a Gaussian: per direction of curvature lambda, with x = h lambda, the
  covariance error contracts by (1 - x) / (1 + x) per FB-GVI step and by 1 - 2x per BW-SGD step,
  identical to first order for the slow directions (x << 1) that set the convergence time.
* **Where they differ is the stable range of h**, as the paper argues: the same linearisation
  gives |1 - 2x| < 1, i.e. h < 1/lambda_max for BW-SGD, but x^2 (x - 1) / (x + 1) < 1, i.e.
  h < 1.84/lambda_max for FB-GVI's covariance (the mean step needs h < 2/lambda_max for both).
  Measured: at h = 1/beta BW-SGD is already marginal (its ELBO drops ~11 nats below the start at
  step 2 in `det` and `det-stein` before recovering; 1 of 8 stochastic seeds diverges); at
  h = 1.5/beta FB-GVI is monotone and settles in `det` and `det-stein` (to a biased fixed \
point: see ../fbgvi_paper/FBGVI_PAPER.md, where the same step leaves KL 0.45 on a Gaussian) \
(no seed diverges in
  `stoch`) while BW-SGD falls to about -1340 (`det`), diverges (`det-stein`) or loses a seed
  (`stoch`). At h >= 2/beta both are unstable (the mean step overshoots), FB-GVI less violently.
* **Best of the grid at a fixed budget.** With every step size that did not diverge at that budget
  allowed (first best-of-grid table), FB-GVI wins where the larger step pays and the budget is
  not yet converged: `det` at 1e5 (+0.81 ± 0.05 nat: FB-GVI at 1.5/beta vs BW-SGD's best 1/beta),
  `det-stein` at 1e4 (+0.19 ± 0.06); the stochastic differences at 1e3-1e4 (+1.1 ± 1.0,
  +0.4 ± 0.4) are not significant with 8 seeds. It *loses* twice, to BW-SGD at h = 2/beta caught
  early in a transient before that run blows up: `det` at 1e4 (3 steps; -1.07 ± 0.05) and
  `det-stein` at 1e3 (6 steps; -1.36 ± 0.05). At 1e6 everything that converges ties (|diff| <=
  0.1 ± 0.1). Restricting both to step sizes that never drop more than 1 nat below the start over
  the whole run (second table; this removes BW-SGD's h = 1/beta for its transient drop) FB-GVI
  wins at 1e3-1e4 in all variants (+0.3 to +3.6 nat) and at 1e5 in `det` (+3.3), and ties
  otherwise. The exact-Hessian `det` variant is the costliest per unit of progress throughout
  (3200 units per step).
* **Against SVI AutoMultivariateNormal + Adam lr 1e-3 (Adam's default) at equal gradient
  evaluations**, FB-GVI `det-stein` (gradients only) at h = 1/beta is ahead at 1e3 and 1e4
  (-65.5 vs -256.0, -57.3 vs -59.3), ties at 1e5 (-57.04 ± 0.04 vs -57.11 ± 0.03) and is ahead at
  1e6 (-57.02 ± 0.04 vs -57.26 ± 0.06, Adam's constant-step noise); SFB-GVI (`stoch`, h = 1/beta)
  is ahead at every budget (1e5: -56.94 ± 0.05 vs -57.11 ± 0.03). FB-GVI `det` with the exact
  Hessian loses at 1e4-1e5 (-67.9 / -59.3) and wins only at 1e6. SVI starts at AutoMVN's default
  (prior median, scale 0.1) and pays no initialisation; the GVI runs pay their 363-unit MAP and
  curvature start.

## Tables

{report}
"""


if __name__ == "__main__":
    main()
