"""FB-GVI against BW-SGD and NumPyro SVI (AutoMultivariateNormal): ELBO per unit of work.

    python -m benchmarks.fbgvi_curves [--quick]

Target: Bayesian logistic regression on the breast-cancer data (``examples/data/breast_cancer.csv``,
569 rows, 30 standardised features), one latent vector ``theta`` = (intercept, 30 weights) with
prior N(0, 5^2) on the intercept and N(0, 1) on the weights: d = 31, strongly log-concave (the
prior gives curvature >= 1/25) and not Gaussian.

Methods, all with ``float32`` on the CPU:

* ``FB-GVI`` -- deterministic FB-GVI (``gf.FBGVI(model)``: 100 fixed antithetic draws, exact
  Hessian, ``h = 1 / beta``), driven through the pure core ``numpyro_gflow.fbgvi.step`` from the
  engine's own initial state (``FBGVI.init``, the MCMC-kernel entry point: MAP by 200 Adam
  steps, then curvature by power iteration). The script checks that its own loop reproduces
  ``FBGVI.run(..., init_state=...)``.
* ``FB-GVI stein`` -- the same with ``hessian="stein"`` (gradients only, 100 draws).
* ``SFB-GVI`` -- ``gf.FBGVI(model, stochastic=True)``: one fresh draw per step, exact Hessian,
  the decreasing step schedule.
* ``BW-SGD`` / ``BW-SGD stoch`` -- Lambert et al. (2022), "Variational inference via
  Wasserstein gradient flows": the forward step alone, with the entropy's gradient taken
  explicitly, ``m <- m - h E[grad V]``, ``S <- M S M^T``, ``M = I - h (E[grad^2 V] - S^{-1})``;
  the same start, step sizes (``h`` and the stochastic schedule), draws and Hessian as
  ``FB-GVI`` / ``SFB-GVI`` (implemented below).
* ``SVI lr=1e-3`` / ``SVI lr=1e-2`` -- NumPyro ``SVI`` with ``AutoMultivariateNormal`` (its
  defaults: start at the prior median, scale 0.1), ``Trace_ELBO`` with one particle, Adam.

Work is counted in evaluations of the model's log density derivatives at one point:
a gradient (``grad V``) or a Hessian-vector product (HVP). An exact Hessian costs d = 31 HVPs
per draw. The x-axis, "gradient-equivalents", counts an HVP as one gradient (forward-over-
reverse costs a small multiple of a gradient one at a time; batched as here it measured cheaper
than a gradient per unit, see the timing line the script prints). FB-GVI's initialisation is
charged too: 200 gradients (MAP) + d + 31 + 101 HVPs (trace, largest and smallest curvature).
SVI's one-particle ELBO gradient counts as one gradient.

ELBO: ``E_q[log p] + H(q)`` with the entropy exact and the energy by Monte Carlo over 2000
fixed standard normal draws ``eps`` shared by every method and checkpoint (common random
numbers: ``x = m + L eps``); the unnormalised ``log p`` is NumPyro's ``-potential_energy``.

Outputs: the markdown tables on stdout and in ``benchmarks/FBGVI_CURVES.md``; the plot
``benchmarks/results/fbgvi_curves.png``.
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
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import AutoMultivariateNormal  # noqa: E402
from numpyro.infer.util import potential_energy  # noqa: E402

import numpyro_gflow as gf  # noqa: E402
from numpyro_gflow import fbgvi  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "breast_cancer.csv"
RESULTS = Path(__file__).resolve().parent / "results"
NOTE = Path(__file__).resolve().parent / "FBGVI_CURVES.md"

NUM_ELBO_DRAWS = 2000
MAP_STEPS = 200                 # FBGVI's default
POWER_ITERATIONS = (30, 100)    # numpyro_gflow.isomix._curvature / smallest_curvature defaults


# ---------------------------------------------------------------------------- data, model
def load_data():
    with open(DATA) as f:
        header = f.readline().strip().split(",")
    table = np.loadtxt(DATA, delimiter=",", skiprows=1)
    assert table.shape == (int(header[0]), int(header[1]) + 1), table.shape
    X, y = table[:, :-1], table[:, -1]
    X = (X - X.mean(0)) / X.std(0)
    return jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)


def model(X, y=None):
    d = X.shape[1] + 1
    scale = jnp.ones(d).at[0].set(5.0)
    theta = numpyro.sample("theta", dist.Normal(0.0, scale).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(logits=X @ theta[1:] + theta[0]), obs=y)


# ---------------------------------------------------------------------------- BW-SGD
def bw_sgd_step(state: fbgvi.FBGVIState, score_fn, hvp_fn, stochastic: bool):
    """Lambert et al.'s Bures-Wasserstein SGD, written like ``fbgvi.step`` (same draws, same
    random stream, same step schedule) but with ``M = I - h (E[grad^2 V] - S^{-1})`` and no
    backward (JKO) step."""
    step_size, alpha, draws = state.step_size, state.alpha, state.draws
    rng_key, draw_key, batch_key = jax.random.split(state.rng_key, 3)
    m, S = state.particles[0], state.cov
    d = m.shape[0]
    eye = jnp.eye(d, dtype=m.dtype)
    C = jnp.linalg.cholesky(S)
    u = jax.random.normal(draw_key, draws.shape, m.dtype) if stochastic else draws
    x = m + u @ C.T
    _, score = score_fn(x, batch_key)
    hess = jax.vmap(lambda xi: jax.vmap(lambda e: hvp_fn(xi, e, batch_key))(eye))(x)
    e_hess = jnp.mean(hess, 0)
    e_hess = 0.5 * (e_hess + e_hess.T)
    if stochastic:
        h = jnp.minimum(step_size, 1.0 / (alpha * (state.count + 1.0 / (alpha * step_size))))
    else:
        h = step_size
    S_inv = jax.scipy.linalg.cho_solve((C, True), eye)
    M = eye - h * (e_hess - S_inv)
    S_new = M @ S @ M.T
    return state._replace(particles=(m + h * jnp.mean(score, 0))[None],
                          cov=0.5 * (S_new + S_new.T), count=state.count + 1, rng_key=rng_key)


# ---------------------------------------------------------------------------- helpers
def log_spaced_steps(max_steps, extra=(), num=40):
    grid = np.unique(np.round(np.geomspace(1, max_steps, num)).astype(int))
    grid = np.concatenate([[0], grid, [k for k in extra if 0 <= k <= max_steps]])
    return np.unique(grid)


def time_per_step(advance, state, n, repeat=3):
    """Seconds per step of a compiled loop: the fastest of ``repeat`` runs of ``n`` steps (the
    machine is shared; LAPACK's eigh in particular slows down a lot under contention)."""
    jax.block_until_ready(advance(state, 1))                    # compile
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(advance(state, n))
        best = min(best, time.perf_counter() - t0)
    return best / n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller budget (a smoke run)")
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

    # common random numbers for every ELBO
    eps = jax.random.normal(jax.random.key(2024), (NUM_ELBO_DRAWS, d))
    entropy_const = 0.5 * d * (1 + jnp.log(2 * jnp.pi))

    @jax.jit
    def elbo_terms(m, L):   # per draw: log p(m + L eps) + H(q)
        return -jax.vmap(V)(m + eps @ L.T) + entropy_const + jnp.sum(jnp.log(jnp.abs(jnp.diag(L))))

    def elbo(m, L):
        terms = elbo_terms(m, L)
        return jnp.mean(terms), jnp.std(terms) / jnp.sqrt(NUM_ELBO_DRAWS)

    def elbo_cov(m, S):
        L = jnp.linalg.cholesky(S)
        if not bool(jnp.all(jnp.isfinite(L))):
            return float("nan"), float("nan")
        e, se = elbo(m, L)
        return float(e), float(se)

    # ------------------------------------------------------------------ FB-GVI start
    keys = jax.random.split(jax.random.PRNGKey(0), 1)   # one "chain": the MCMC-kernel init
    t0 = time.perf_counter()
    eng_det = gf.FBGVI(model)
    state_det = jax.block_until_ready(eng_det.init(keys, 0, model_args=args))
    t_init_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(gf.FBGVI(model).init(keys, 0, model_args=args))
    t_init = time.perf_counter() - t0
    state_sto = gf.FBGVI(model, stochastic=True).init(keys, 0, model_args=args)
    state_stein = gf.FBGVI(model, hessian="stein").init(keys, 0, model_args=args)
    for s in (state_sto, state_stein):
        assert np.allclose(s.particles, state_det.particles) and np.allclose(s.cov, state_det.cov)
    h, alpha = float(state_det.step_size), float(state_det.alpha)
    init_grads, init_hvps = MAP_STEPS, d + POWER_ITERATIONS[0] + 1 + POWER_ITERATIONS[1] + 1
    B = state_det.draws.shape[0]
    print(f"d = {d}; FB-GVI start: h = 1/beta = {h:.4g} (beta = {1 / h:.4g}), alpha = {alpha:.4g}, "
          f"start cov = {float(state_det.cov[0, 0]):.4g} I; init {t_init:.2f} s "
          f"({t_init_first:.1f} s with compilation)")

    # ------------------------------------------------------------------ the methods
    def core_advance(step_fn):
        body = lambda i, s: step_fn(s)  # noqa: E731
        return jax.jit(lambda s, n: lax.fori_loop(0, n, body, s))

    fb = lambda hess, sto: (lambda s: fbgvi.step(s, score_fn, hvp_fn, hess, sto)[0])  # noqa: E731
    bw = lambda sto: (lambda s: bw_sgd_step(s, score_fn, hvp_fn, sto))  # noqa: E731
    gvi_methods = {
        # name: (advance, start, gradients per step, HVPs per step)
        "FB-GVI": (core_advance(fb("exact", False)), state_det, B, B * d),
        "FB-GVI stein": (core_advance(fb("stein", False)), state_stein, B, 0),
        "SFB-GVI": (core_advance(fb("exact", True)), state_sto, 1, d),
        "BW-SGD": (core_advance(bw(False)), state_det, B, B * d),
        "BW-SGD stoch": (core_advance(bw(True)), state_sto, 1, d),
    }

    # our loop == the engine's loop
    n_check = 20
    ours = gvi_methods["FB-GVI"][0](state_det, n_check)
    theirs = eng_det.run(jax.random.key(0), n_check, *args, progress_bar=False, init_state=state_det)
    diff = float(jnp.max(jnp.abs(ours.cov - theirs.state.cov)) / jnp.max(jnp.abs(theirs.state.cov)))
    e_ours, _ = elbo_cov(ours.particles[0], ours.cov)
    e_lib, se_lib = theirs.elbo(jax.random.key(5), NUM_ELBO_DRAWS)
    print(f"check: own loop vs FBGVI.run after {n_check} steps: max rel cov diff {diff:.1e}; "
          f"ELBO (CRN, exact entropy) {e_ours:.3f} vs result.elbo {float(e_lib):.3f} +- {float(se_lib):.3f}")
    assert diff < 1e-4, diff

    curves, per_step_s, notes, final = {}, {}, {}, {}
    for name, (advance, start, g, hv) in gvi_methods.items():
        init_cost = init_grads + init_hvps
        max_steps = int((max_cost - init_cost) // (g + hv))
        extra = [int((b - init_cost) // (g + hv)) for b in budgets]
        grid = log_spaced_steps(max_steps, extra)
        per_step_s[name] = time_per_step(advance, start, min(max_steps, max(20, int(2e5 // (g + hv)))))
        rows, state, done = [], start, 0
        t0 = time.perf_counter()
        for k in grid:
            state = advance(state, int(k - done))
            done = int(k)
            e, se = elbo_cov(state.particles[0], state.cov)
            rows.append((k, init_grads + k * g, init_hvps + k * hv, e, se))
            if not np.isfinite(e):
                notes[name] = f"covariance not SPD / non-finite from step <= {k}"
                break
            final[name] = (state.particles[0], jnp.linalg.cholesky(state.cov))
        curves[name] = np.array(rows)
        print(f"{name:<13} {max_steps:>7} steps, {g} grads + {hv} HVPs per step, "
              f"{per_step_s[name] * 1e6:8.1f} us/step; ELBO {rows[-1][3]:.3f} "
              f"({time.perf_counter() - t0:.1f} s)")

    guide = AutoMultivariateNormal(model)
    for lr in (1e-3, 1e-2):
        name = f"SVI lr={lr:g}"
        svi = SVI(model, guide, optax.adam(lr), Trace_ELBO())
        start = svi.init(jax.random.key(0), *args)
        advance = jax.jit(lambda s, n, svi=svi: lax.fori_loop(0, n, lambda i, s: svi.update(s, *args)[0], s))
        max_steps = int(max_cost)
        grid = log_spaced_steps(max_steps, [int(b) for b in budgets])
        per_step_s[name] = time_per_step(advance, start, 20000)
        rows, state, done = [], start, 0
        t0 = time.perf_counter()
        for k in grid:
            state = advance(state, int(k - done))
            done = int(k)
            p = svi.get_params(state)
            e, se = elbo(p["auto_loc"], p["auto_scale_tril"])
            rows.append((k, k, 0, float(e), float(se)))
        final[name] = (p["auto_loc"], p["auto_scale_tril"])
        curves[name] = np.array(rows)
        print(f"{name:<13} {max_steps:>7} steps, 1 grad per step, {per_step_s[name] * 1e6:8.1f} us/step; "
              f"ELBO {rows[-1][3]:.3f} ({time.perf_counter() - t0:.1f} s)")

    # batched cost of a gradient vs a HVP (what the per-step times are made of)
    xb = state_det.particles[0] + state_det.draws @ jnp.linalg.cholesky(state_det.cov).T
    t_grad = time_per_step(jax.jit(lambda x, n: jax.vmap(grad_v)(x * n)), xb, 1) / B
    hess_all = jax.jit(lambda x, n: jax.vmap(lambda xi: jax.vmap(lambda e: hvp_fn(xi, e, None))(
        jnp.eye(d)))(x * n))
    t_hvp = time_per_step(hess_all, xb, 1) / (B * d)

    # ------------------------------------------------------------------ tables
    best = max(np.nanmax(c[:, 3]) for c in curves.values())

    def at_budget(c, b):
        cost = c[:, 1] + c[:, 2]
        ok = (cost <= b * (1 + 1e-9)) & np.isfinite(c[:, 3])
        return c[ok][-1] if ok.any() else None

    fmt_b = lambda b: f"{b:.0e}".replace("e+0", "e")  # noqa: E731
    # the last checkpoint of each method against FB-GVI's, on the common draws (paired SE)
    ref_terms = elbo_terms(*final["FB-GVI"])
    paired = {}
    for name, (m, L) in final.items():
        delta = elbo_terms(m, L) - ref_terms
        paired[name] = (float(jnp.mean(delta)), float(jnp.std(delta) / jnp.sqrt(NUM_ELBO_DRAWS)))

    lines = ["| method | grads + HVPs / step | us / step | " + " | ".join(fmt_b(b) for b in budgets)
             + " | best ELBO (at cost) | end - FB-GVI end (paired SE) |",
             "|---|---|---|" + "---|" * len(budgets) + "---|---|"]
    for name, c in curves.items():
        g, hv = (c[1, 1] - c[0, 1]) / max(c[1, 0] - c[0, 0], 1), (c[1, 2] - c[0, 2]) / max(c[1, 0] - c[0, 0], 1)
        cells = []
        for b in budgets:
            r = at_budget(c, b)
            cells.append("—" if r is None else f"{r[3]:.2f}")
        i = int(np.nanargmax(c[:, 3]))
        lines.append(f"| {name} | {int(g)} + {int(hv)} | {per_step_s[name] * 1e6:.0f} | " + " | ".join(cells)
                     + f" | {c[i, 3]:.2f} ({fmt_b(c[i, 1] + c[i, 2])}) | "
                     + ("—" if name == "FB-GVI" else f"{paired[name][0]:+.3f} ({paired[name][1]:.3f})") + " |")
    table = "\n".join(lines)

    # equal wall time (per-step time x steps, + FB-GVI's init for the GVI methods)
    walls = [0.1, 0.3, 1.0, 1.5, 2.0, 3.0, 10.0]
    wl = ["| method | " + " | ".join(f"{w:g} s" for w in walls) + " |",
          "|---|" + "---|" * len(walls)]
    for name, c in curves.items():
        t = c[:, 0] * per_step_s[name] + (0.0 if name.startswith("SVI") else t_init)
        cells = []
        for w in walls:
            ok = (t <= w) & np.isfinite(c[:, 3])
            cells.append(f"{c[ok][-1, 3]:.2f}" if ok.any() else "—")
        wl.append(f"| {name} | " + " | ".join(cells) + " |")
    wall_table = "\n".join(wl)

    # per budget, the best method; per method, the worst dip below its own start after the start
    summary = []
    for b in budgets:
        vals = {n: at_budget(c, b) for n, c in curves.items()}
        vals = {n: r[3] for n, r in vals.items() if r is not None}
        top = sorted(vals, key=vals.get, reverse=True)[:3]
        summary.append(f"* at {fmt_b(b)}: " + ", ".join(f"{n} {vals[n]:.2f}" for n in top))
    for name, c in curves.items():
        ok = c[np.isfinite(c[:, 3])]
        worst = int(np.argmin(ok[1:, 3])) + 1
        if ok[worst, 3] < ok[0, 3]:
            summary.append(f"* {name}: the ELBO dips below its start ({ok[0, 3]:.2f}) to {ok[worst, 3]:.2f} "
                           f"at step {int(ok[worst, 0])} (cost {fmt_b(ok[worst, 1] + ok[worst, 2])}) "
                           "before recovering")
    summary = "\n".join(summary)

    se_max = max(c[np.isfinite(c[:, 3])][-1, 4] for c in curves.values())   # at the end
    print()
    print(f"ELBO (2000 common draws; MC SE at the end <= {se_max:.3f}) after a budget of gradient-equivalents "
          "(gradients + HVPs, FB-GVI's init included); best value seen by any method "
          f"{best:.3f}:\n")
    print(table)
    print("\nELBO at equal wall time (compiled loop, this machine; GVI methods pay the "
          f"{t_init:.2f} s init):\n")
    print(wall_table)
    print("\nbest three per budget; dips:\n" + summary)
    print(f"\nbatched over {B} points: {t_grad * 1e6:.2f} us per gradient, {t_hvp * 1e6:.2f} us per HVP")
    for name, msg in notes.items():
        print(f"note: {name}: {msg}")

    # ------------------------------------------------------------------ plot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    styles = {"FB-GVI": ("C0", "-"), "FB-GVI stein": ("C0", ":"), "SFB-GVI": ("C0", "--"),
              "BW-SGD": ("C3", "-"), "BW-SGD stoch": ("C3", "--"),
              "SVI lr=0.001": ("C2", "-"), "SVI lr=0.01": ("C2", "--")}
    for name, c in curves.items():
        col, ls = styles.get(name, ("k", "-"))
        cost = np.maximum(c[:, 1] + c[:, 2], 1)
        wall = np.maximum(c[:, 0] * per_step_s[name] + (0 if name.startswith("SVI") else t_init), 1e-4)
        gap = np.maximum(best - c[:, 3], 1e-3)
        axes[0].plot(cost, c[:, 3], color=col, ls=ls, marker=".", ms=3, label=name)
        axes[1].loglog(cost, gap, color=col, ls=ls, marker=".", ms=3, label=name)
        axes[2].loglog(wall, gap, color=col, ls=ls, marker=".", ms=3, label=name)
    axes[0].set_xscale("log")
    axes[2].set_xlim(left=1e-2)
    axes[0].set_ylim(best - 40, best + 2)
    axes[0].set_ylabel("ELBO (2000 common draws)")
    axes[1].set_ylabel("best ELBO seen - ELBO")
    axes[2].set_ylabel("best ELBO seen - ELBO")
    for ax in axes[:2]:
        ax.set_xlabel("gradient-equivalents (gradients + HVPs, init included)")
    axes[2].set_xlabel("wall time, s (compiled, per-step time x steps; 2 shared CPU cores)")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Breast-cancer logistic regression (d = {d}): FB-GVI vs BW-SGD vs SVI AutoMVN")
    fig.tight_layout()
    png = RESULTS / "fbgvi_curves.png"
    fig.savefig(png, dpi=110)
    print(f"saved {png}")

    if not opts.no_note and not opts.quick:
        NOTE.write_text(_note(d, h, alpha, B, t_init, table, wall_table, t_grad, t_hvp, best,
                              se_max, notes, diff, summary))
        print(f"wrote {NOTE}")
    print(f"total {time.perf_counter() - t_start:.0f} s")


def _note(d, h, alpha, B, t_init, table, wall_table, t_grad, t_hvp, best, se_max, notes, diff,
          summary):
    notes_md = "".join(f"* {k}: {v}\n" for k, v in notes.items()) or "* none\n"
    return f"""# FB-GVI convergence curves (ELBO vs work)

Written by `python -m benchmarks.fbgvi_curves` (the plot goes to
`benchmarks/results/fbgvi_curves.png`, not committed). Machine: {platform.machine()}, 2 shared
CPU cores (another benchmark may have been running alongside), jax {jax.__version__}, numpyro
{numpyro.__version__}, float32, `OPENBLAS_NUM_THREADS=1` (see the end).

**Target.** Bayesian logistic regression on the breast-cancer data (569 rows, 30 standardised
features), `theta` = (intercept, 30 weights), prior N(0, 5^2) on the intercept and N(0, 1) on
the weights: d = {d}, strongly log-concave, not Gaussian. FB-GVI's start (MAP by {MAP_STEPS} Adam
steps, then power iteration): h = 1 / beta = {h:.4g}, alpha = {alpha:.4g} (so beta / alpha
= {1 / (h * alpha):.0f}).

**Methods.** `FB-GVI`: `gf.FBGVI(model)` ({B} fixed antithetic draws, exact Hessian); `FB-GVI
stein`: the same with `hessian="stein"` (gradients only); `SFB-GVI`: `gf.FBGVI(model,
stochastic=True)` (one draw per step, decreasing steps). `BW-SGD` / `BW-SGD stoch`: Lambert et
al. (2022), `m <- m - h E[grad V]`, `S <- M S M^T`, `M = I - h (E[grad^2 V] - S^-1)`, with the
same start, step size / schedule, draws and exact Hessian as `FB-GVI` / `SFB-GVI` (only the
entropy step differs). All five are driven through their pure step functions from the engine's
own initial state (`FBGVI.init`); the script checks that its loop matches `FBGVI.run`
(max relative covariance difference {diff:.0e} after 20 steps). `SVI lr=...`: NumPyro SVI,
`AutoMultivariateNormal` with its default start (prior median, scale 0.1), `Trace_ELBO` with one
particle, Adam.

**Counting.** One unit = one gradient of `log p` at one point, or one Hessian-vector product
(HVP). An exact Hessian is d = {d} HVPs per draw. The GVI methods are charged FB-GVI's
initialisation ({MAP_STEPS} gradients + {d + POWER_ITERATIONS[0] + POWER_ITERATIONS[1] + 2} HVPs). SVI: one gradient per
step. One at a time an HVP (forward-over-reverse) costs a small multiple of a gradient, so
counting it as one favours the exact-Hessian methods; batched over {B} draws, as here, an HVP
measured {t_hvp * 1e6:.2f} us against {t_grad * 1e6:.2f} us per gradient (for this model it is a
matrix product). The wall-time table below is the other view.

**ELBO.** Exact Gaussian entropy plus Monte Carlo energy over 2000 standard normal draws shared
by every method and checkpoint (common random numbers); MC SE at each method's last
checkpoint <= {se_max:.3f} (differences between methods, on common draws, are far more precise). The best value
any method reached is {best:.3f}.

## ELBO after a budget of gradient-equivalents

The last checkpoint whose cumulative cost (init included) is within the budget; "—": the
method's first checkpoint (for the GVI methods, the start Gaussian) costs more than that.
At 1e3 the exact-Hessian deterministic methods have not taken a step yet (one step costs
{B * (d + 1)}), so their entry is the start Gaussian. Last column: the method's last checkpoint
minus FB-GVI's last, ELBO on the same 2000 draws, with the paired standard error.

{table}

Best three per budget, and every method whose ELBO fell below its own start value on the way
(a checkpoint after the start worse than the start):

{summary}

## ELBO at equal wall time

Steps x the measured compiled time per step (+ {t_init:.2f} s for FB-GVI's init for the GVI methods:
a second call, so without compilation; it runs eagerly, outside `jit`); one run on a shared machine, so read it to within a factor of ~1.5.

{wall_table}

## Failures

{notes_md}
## Note: eigh and OpenBLAS threads

FB-GVI's backward step is one symmetric eigen-decomposition per step. On CPU, JAX takes it from
scipy's OpenBLAS LAPACK (`lapack_ssyevd_ffi`). With OpenBLAS's default threads and another job
on the 2 cores, one 31 x 31 `eigh` took about 15-17 ms (measured inside and outside a compiled
loop) instead of about 50 us with `OPENBLAS_NUM_THREADS=1`, which made an FB-GVI step several
times slower than the otherwise identical BW-SGD step (which needs only a Cholesky). This script sets
`OPENBLAS_NUM_THREADS=1` before importing numpy / JAX.
"""


if __name__ == "__main__":
    main()
