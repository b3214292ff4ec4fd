"""The Gaussian-target experiment of Diao, Balasubramanian, Chewi & Salim (ICML 2023), rerun with
this package's FB-GVI step (``numpyro_gflow.core.fbgvi.step``) against BW-SGD (Lambert et al. 2022;
``numpyro_gflow.core.fbgvi.bw_sgd_step``).

    python -m benchmarks.experiments.fbgvi_paper.fbgvi_paper [--no-plot]

Set-up, as in the authors' notebook (github.com/mzydiao/FBGVI, ``FBGVI-Experiments.ipynb``,
class ``GaussianExperiment`` with its defaults): target ``N(mu*, Sigma*)`` in d = 5 with
``mu* ~ U(0, 1)^d`` and ``Sigma* = Q diag(geomspace(1/beta, 1/alpha, d)) Q^T``, ``Q`` a random
rotation, beta = 1, alpha = 0.01 (covariance eigenvalues 1 ... 100: V is 1-smooth and
0.01-strongly convex, condition number 100); start ``N(0, I / beta)``; for a total time T each step
size eta runs T / eta iterations, and the curves are log KL(p_k || pi) against the time eta * k.
Two oracles, as in the notebook:

* ``det`` -- exact expectations: E[grad V] = A (m - mu*) and E[grad^2 V] = A (A = Sigma*^-1).
  Here through ``fbgvi.step``'s deterministic branch with the 2d cubature points
  ``+- sqrt(d) e_i`` (mean 0, second moment I, so both expectations are exact for a quadratic V);
* ``stoch`` -- one draw x ~ N(m, S) per step for the gradient, exact Hessian (which is the constant
  A here, so only the mean is noisy); constant step as in the notebook (``alpha`` in the state set
  to 1e-12, which turns ``fbgvi.step``'s schedule h / (1 + alpha h k) into h up to 1e-8);
  ``stoch-decay``: the same with the package's default schedule, alpha = 0.01 (the strong-convexity
  constant): h_k = h / (1 + alpha h k).

Where the notebook catches ``LinAlgError`` (BW-SGD's covariance losing positive definiteness) and
repeats the last value, here a run whose covariance stops being positive definite (Cholesky NaN,
or a non-positive determinant) is reported as diverged from that step on.

KL between Gaussians in closed form, float64. Output: a markdown table on stdout (pasted into
``FBGVI_PAPER.md`` by hand) and the plot ``fbgvi_paper.png``, both next to this script.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from numpyro_gflow.core import fbgvi  # noqa: E402

HERE = Path(__file__).resolve().parent
PLOT = HERE / "fbgvi_paper.png"

DIM = 5
ALPHA, BETA = 0.01, 1.0           # the notebook's GaussianExperiment defaults
ETAS = (0.1, 0.5, 0.9, 1.0, 1.5)  # h * beta; T / eta is an integer for each
T_TOTAL = 900.0
TIMES = (9.0, 45.0, 90.0, 180.0, 450.0, 900.0)
NUM_SEEDS = 16
TARGET_SEED = 0
CONST_ALPHA = 1e-12               # "constant step": h / (1 + 1e-12 h k)


# ---------------------------------------------------------------------------- target
def make_target(seed: int = TARGET_SEED, dim: int = DIM, alpha: float = ALPHA, beta: float = BETA):
    """(mu*, Sigma*, A = Sigma*^-1) with covariance eigenvalues geomspace(1/beta, 1/alpha, dim)
    in a Haar-random basis and mu* ~ U(0, 1)^dim."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.0, 1.0, dim)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))
    eig = np.geomspace(1.0 / beta, 1.0 / alpha, dim)
    return mu, (q * eig) @ q.T, (q / eig) @ q.T


def oracles(mu, A):
    """``score_fn(x, key) -> (log pi(x), grad log pi(x))`` for rows of x, and ``hvp_fn`` of V."""
    mu, A = jnp.asarray(mu), jnp.asarray(A)

    def score_fn(x, key):
        diff = x - mu
        return -0.5 * jnp.sum((diff @ A) * diff, axis=-1), -diff @ A

    def hvp_fn(x, v, key):
        return A @ v

    return score_fn, hvp_fn


def kl_to_target(m, S, mu, A, logdet_sigma):
    """KL(N(m, S) || N(mu, A^-1)); NaN unless S is positive definite."""
    d = m.shape[-1]
    diff = mu - m
    sign, logdet_s = jnp.linalg.slogdet(S)
    kl = 0.5 * (jnp.trace(A @ S) - d + diff @ A @ diff + logdet_sigma - logdet_s)
    return jnp.where(sign > 0, kl, jnp.nan)


def cubature(dim, dtype):
    """The 2d points +- sqrt(d) e_i: mean 0 and second moment I exactly."""
    e = jnp.sqrt(float(dim)) * jnp.eye(dim, dtype=dtype)
    return jnp.concatenate([e, -e])


# ---------------------------------------------------------------------------- runs
def kl_path(method: str, variant: str, eta: float, n_steps: int, target, seeds=(0,),
            dtype=jnp.float64):
    """KL after each of ``n_steps`` steps (row 0: the start), one column per seed: (n+1, S)."""
    mu, _, A = target
    score_fn, hvp_fn = oracles(jnp.asarray(mu, dtype), jnp.asarray(A, dtype))
    mu_j, A_j = jnp.asarray(mu, dtype), jnp.asarray(A, dtype)
    logdet_sigma = -jnp.linalg.slogdet(A_j)[1]
    stochastic = variant != "det"
    alpha = ALPHA if variant == "stoch-decay" else CONST_ALPHA
    draws = jnp.zeros((1, DIM), dtype) if stochastic else cubature(DIM, dtype)
    if method == "FB-GVI":
        step = lambda s: fbgvi.step(s, score_fn, hvp_fn, "exact", stochastic)[0]  # noqa: E731
    else:
        step = lambda s: fbgvi.bw_sgd_step(s, score_fn, hvp_fn, "exact", stochastic)  # noqa: E731

    def one(key):
        s0 = fbgvi.init(jnp.zeros(DIM, dtype), jnp.eye(DIM, dtype=dtype) / BETA, eta, alpha, draws,
                        key)

        def body(s, _):
            s = step(s)
            return s, kl_to_target(s.mean, s.cov, mu_j, A_j, logdet_sigma)

        kls = lax.scan(body, s0, None, length=n_steps)[1]
        k0 = kl_to_target(s0.mean, s0.cov, mu_j, A_j, logdet_sigma)
        return jnp.concatenate([k0[None], kls])

    keys = jnp.stack([jax.random.key_data(jax.random.key(1000 + s)) for s in seeds])
    out = jax.jit(jax.vmap(lambda kd: one(jax.random.wrap_key_data(kd))))(keys)
    out = np.asarray(out).T                                  # (n + 1, S)
    # once a covariance lost positive definiteness it stays "diverged" (the notebook keeps the
    # last value instead)
    bad = ~np.isfinite(out)
    return np.where(np.maximum.accumulate(bad, axis=0), np.nan, out)


def predicted_plateau(eta, A):
    """Stationary mean KL of the constant-step stochastic iteration on this Gaussian: the
    covariance converges exactly (the Hessian is exact), the mean error per eigen-direction a
    has variance eta / (2 - eta a) (AR(1) with factor 1 - eta a and noise eta^2 a^2 / a), so
    E KL = sum_a a eta / (2 (2 - eta a))."""
    a = np.linalg.eigvalsh(A)
    return float(np.sum(a * eta / (2.0 * (2.0 - eta * a))))


def predicted_bias(eta, A):
    """KL of FB-GVI's fixed point on this Gaussian. Per eigen-direction a with x = eta a < 1 the
    fixed point is the exact variance 1/a; for 1 < x < 2 the forward map I - eta A flips that
    direction and the backward step's root is s = eta / (2 - x) = r / a with r = x / (2 - x) > 1
    (the fixed points of s = JKO((1 - x)^2 s) solve x (2 - x) s^2 - 2 eta s + eta^2 = 0, roots
    1/a and eta / (2 - x), and the JKO step takes the larger): KL = sum 0.5 (r - 1 - log r)."""
    x = eta * np.linalg.eigvalsh(A)
    r = np.where(x > 1, x / (2.0 - x), 1.0)
    return float(np.sum(0.5 * (r - 1.0 - np.log(r))))


def predicted_slope(eta, A):
    """Late-time slope of log KL per unit time for the deterministic iterations: the mean error
    along the flattest direction a_min contracts by (1 - eta a_min) per step (same in FB-GVI and
    BW-SGD) and enters KL squared."""
    a_min = float(np.min(np.linalg.eigvalsh(A)))
    return 2.0 * np.log(abs(1.0 - eta * a_min)) / eta


def fit_slope(t, log_kl):
    ok = np.isfinite(log_kl)
    return float(np.polyfit(t[ok], log_kl[ok], 1)[0]) if ok.sum() > 2 else float("nan")


def fmt(x):
    if x is None or not np.isfinite(x):
        return "diverged"
    return f"{x:.2e}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-plot", action="store_true")
    opts = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    target = make_target()
    mu, sigma, A = target
    print(f"target: d = {DIM}, mu* = {np.round(mu, 3)}, Sigma* eigenvalues "
          f"{np.round(np.linalg.eigvalsh(sigma), 3)}; start N(0, I)")
    seeds = tuple(range(NUM_SEEDS))
    runs = {}
    for variant in ("det", "stoch", "stoch-decay"):
        for method in ("FB-GVI", "BW-SGD"):
            for eta in ETAS:
                n = int(round(T_TOTAL / eta))
                runs[(variant, method, eta)] = kl_path(
                    method, variant, eta, n, target, (0,) if variant == "det" else seeds)
    kl0 = float(runs[("det", "FB-GVI", ETAS[0])][0, 0])
    print(f"KL at the start: {kl0:.4f}; runs {time.perf_counter() - t0:.1f} s\n")

    def at(path, eta, t):
        return path[int(round(t / eta))]

    # ------------------------------------------------------------------ deterministic table
    print("### Deterministic (exact expectations): KL(p_k || pi) at time t = eta * k\n")
    print("| method | eta | " + " | ".join(f"t = {t:g}" for t in TIMES)
          + " | slope of log KL per unit time, t in [450, 900] (predicted)"
            " | first non-PD step; note |")
    print("|---|---|" + "---|" * len(TIMES) + "---|---|")
    for method in ("FB-GVI", "BW-SGD"):
        for eta in ETAS:
            p = runs[("det", method, eta)][:, 0]
            cells = [fmt(at(p, eta, t)) for t in TIMES]
            k = np.arange(p.size)
            late = (k * eta >= 450)
            slope = fit_slope(k[late] * eta, np.log(p[late]))
            bad = np.nonzero(~np.isfinite(p))[0]
            first = f"{bad[0]} (t = {bad[0] * eta:g})" if bad.size else "—"
            pred = predicted_slope(eta, A)
            if method == "FB-GVI" and predicted_bias(eta, A) > 1e-9:
                first += f"; fixed point KL {predicted_bias(eta, A):.4f} (predicted)"
            sl = f"{slope:.5f} ({pred:.5f})" if np.isfinite(slope) else f"— ({pred:.5f})"
            print(f"| {method} | {eta:g} | " + " | ".join(cells) + f" | {sl} | {first} |")

    # ------------------------------------------------------------------ stochastic tables
    for variant, title in (("stoch", "Stochastic, constant step (the notebook's)"),
                           ("stoch-decay",
                            "Stochastic, h_k = eta / (1 + 0.01 eta k) (fbgvi's schedule)")):
        print(f"\n### {title}: median KL over {NUM_SEEDS} seeds (diverged seeds in brackets)\n")
        extra = (" | mean KL over t in [450, 900] (predicted plateau) |" if variant == "stoch"
                 else " |")
        print("| method | eta | " + " | ".join(f"t = {t:g}" for t in TIMES) + extra)
        print("|---|---|" + "---|" * len(TIMES) + ("---|" if variant == "stoch" else ""))
        for method in ("FB-GVI", "BW-SGD"):
            for eta in ETAS:
                p = runs[(variant, method, eta)]
                cells = []
                for t in TIMES:
                    row = at(p, eta, t)
                    fin = row[np.isfinite(row)]
                    div = row.size - fin.size
                    c = fmt(np.median(fin)) if fin.size else "diverged"
                    cells.append(c + (f" [{div}]" if div and fin.size else ""))
                line = f"| {method} | {eta:g} | " + " | ".join(cells)
                if variant == "stoch":
                    k = np.arange(p.shape[0])
                    late = p[k * eta >= 450]
                    fin_cols = np.all(np.isfinite(late), axis=0)
                    plateau = float(np.mean(late[:, fin_cols])) if fin_cols.any() else np.nan
                    line += f" | {fmt(plateau)} ({predicted_plateau(eta, A):.2e}) |"
                else:
                    line += " |"
                print(line)

    # plateau scaling
    small = [eta for eta in ETAS if eta * BETA <= 1]
    plats = []
    for eta in small:
        p = runs[("stoch", "FB-GVI", eta)]
        k = np.arange(p.shape[0])
        plats.append(float(np.mean(p[k * eta >= 450])))
    s = np.polyfit(np.log(small), np.log(plats), 1)[0]
    s_pred = np.polyfit(np.log(small), np.log([predicted_plateau(e, A) for e in small]), 1)[0]
    print(f"\nFB-GVI constant-step plateau ~ eta^{s:.3f} (log-log fit over eta = {tuple(small)}; "
          f"the predicted plateaus give eta^{s_pred:.3f})")
    print(f"total {time.perf_counter() - t0:.1f} s")

    if not opts.no_plot:
        plot(runs)


def plot(runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    titles = {"det": "deterministic (exact expectations)",
              "stoch": f"stochastic, constant step (median of {NUM_SEEDS})",
              "stoch-decay": "stochastic, h/(1 + 0.01 h k)"}
    for ax, variant in zip(axes, ("det", "stoch", "stoch-decay")):
        for c, eta in zip(colors, ETAS):
            for method, ls in (("FB-GVI", "-"), ("BW-SGD", "--")):
                p = runs[(variant, method, eta)]
                with np.errstate(all="ignore"):
                    y = np.log(np.nanmedian(p, axis=1)) if p.shape[1] > 1 else np.log(p[:, 0])
                    if p.shape[1] > 1:   # a seed gone: the median is no longer comparable
                        y = np.where(np.all(np.isfinite(p), axis=1), y, np.nan)
                t = np.arange(p.shape[0]) * eta
                stride = max(1, p.shape[0] // 1500)
                ax.plot(t[::stride], y[::stride], ls, color=c, lw=1.0,
                        label=f"{method}, eta = {eta:g}")
        ax.set_title(titles[variant], fontsize=10)
        ax.set_xlabel("time elapsed (eta x iterations)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("log KL(p_k || pi)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Gaussian target, d = 5, covariance eigenvalues 1..100 (Diao et al. 2023 set-up); "
                 "FB-GVI solid, BW-SGD dashed", fontsize=10)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)
    print(f"plot: {PLOT} ({PLOT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
