# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Coin SVGD vs SVGD across learning rates
#
# SVGD needs a step size, and the right one depends on the scale of the posterior. Coin SVGD
# (Sharrock & Nemeth, ICML 2023) moves the same particles along the same SVGD direction but
# replaces the step size by coin betting, so it has no learning rate to tune.
#
# We fit a 5-dimensional Gaussian posterior that is known in closed form, at three scales
# (as is, every scale times 100, every scale times 0.01), with
#
# * SVGD and its default optimizer (the AdaGrad of the SVGD reference code) for a grid of
#   step sizes,
# * SVGD with plain steps `x += eps * phi(x)` (`optax.sgd(eps)`) for the same grid,
# * Coin SVGD, one call, no step size,
#
# and print, for each fit, the error of the particle means (in posterior sds), the relative
# error of the particle sds, the final kernel Stein discrepancy and the wall time, then plot
# the KSD trace of every run.
#
# This file is a [jupytext](https://jupytext.readthedocs.io) "percent" notebook: open it as
# a notebook, or run it as a plain script (`python examples/coin_vs_svgd.py`). With
# `GFLOW_EXAMPLE_SMOKE=1` in the environment it runs 200 steps instead of 2000 and only two
# step sizes (what the test suite does); the numbers are then far from converged.

# %%
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402

import numpyro_gflow as gf  # noqa: E402

SMOKE = os.environ.get("GFLOW_EXAMPLE_SMOKE", "") not in ("", "0")
NUM_STEPS = 200 if SMOKE else 2000
NUM_PARTICLES = 200
# each setting is one compiled program (~2 s to compile): the smoke setting keeps two step sizes
STEP_SIZES = [5e-2, 5e-1] if SMOKE else [1e-3, 1e-2, 5e-2, 1e-1, 5e-1]
SCALES = [1.0, 100.0, 0.01]
print(f"setting: {'smoke (GFLOW_EXAMPLE_SMOKE=1)' if SMOKE else 'full'}: {NUM_STEPS} steps, "
      f"{NUM_PARTICLES} particles, posterior scales {SCALES}")

# %% [markdown]
# ## A Gaussian posterior known in closed form
#
# `x ~ N(0, diag(tau^2))` and ten observations `y_i ~ N(x, diag(s^2))` in 5 dimensions (the
# conjugate Gaussian of the test suite). Multiplying `tau` and `s` by `scale` multiplies every
# posterior sd by `scale`. `tau` and `s` are model arguments, not constants, so each engine is
# compiled once and reused for all three scales (same shapes).

# %%
TAU = jnp.array([1.0, 2.0, 0.5, 1.5, 3.0])
S = jnp.array([1.0, 3.0, 1.0, 2.0, 4.0])
TRUTH = jnp.array([0.5, -1.0, 0.2, 1.0, 2.0])
M = 10
NOISE = jax.random.normal(jax.random.key(3), (M, 5))


def model(y, tau, s):
    x = numpyro.sample("x", dist.Normal(0.0, tau).to_event(1))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(x, s).to_event(1), obs=y)


def problem(scale):
    """Model inputs and the exact posterior mean and sd at this scale."""
    tau, s = TAU * scale, S * scale
    y = TRUTH + s * NOISE
    precision = 1 / tau**2 + M / s**2
    return (y, tau, s), (y.sum(0) / s**2) / precision, 1 / jnp.sqrt(precision)


for scale in SCALES:
    _, _, post_sd = problem(scale)
    print(f"scale {scale:g}: posterior sds {np.round(np.asarray(post_sd), 5)}")

# %% [markdown]
# ## The engines
#
# One engine per setting. `gf.SVGD(model, step_size=eps)` uses the reference code's AdaGrad
# (the default, `step_size=0.05`); `gf.SVGD(model, optimizer=optax.sgd(eps))` takes plain
# steps. `gf.CoinSVGD(model)` takes no step size at all. All run in NumPyro's unconstrained
# coordinates, the papers' setting (`precondition=None`: by default the engines move in the
# Laplace approximation's whitened coordinates, where every scale looks like scale 1 and the
# step-size question below mostly goes away), start from the same particles (NumPyro's
# `init_to_uniform`, same key) and use the same RBF median-heuristic kernel. `trace_ksd=True`
# records the kernel Stein discrepancy at every step (it costs as much as the step itself, so
# it is off by default).

# %%
RAW = {"num_particles": NUM_PARTICLES, "precondition": None, "trace_ksd": True}
settings = [("SVGD AdaGrad", eps, gf.SVGD(model, step_size=eps, **RAW)) for eps in STEP_SIZES]
settings += [("SVGD sgd", eps, gf.SVGD(model, optimizer=optax.sgd(eps), **RAW))
             for eps in STEP_SIZES]
settings += [("CoinSVGD", None, gf.CoinSVGD(model, **RAW))]

# %% [markdown]
# ## Run everything
#
# Each engine is first run once (this compiles it; the time is reported separately), then
# timed on each scale. A run whose particles become non-finite raises `FloatingPointError`;
# we record it as diverged.

# %%
rows, traces, compile_times = [], {}, []
for name, eps, engine in settings:
    args, _, _ = problem(SCALES[0])
    t0 = time.perf_counter()
    try:
        jax.block_until_ready(engine.run(jax.random.key(0), NUM_STEPS, *args,
                                         progress_bar=False).unconstrained)
    except FloatingPointError:
        pass
    compile_times.append(time.perf_counter() - t0)
    for scale in SCALES:
        args, post_mean, post_sd = problem(scale)
        t0 = time.perf_counter()
        try:
            result = engine.run(jax.random.key(0), NUM_STEPS, *args, progress_bar=False)
            x = jax.block_until_ready(result.get_samples()["x"])
        except FloatingPointError:
            rows.append((scale, name, eps, np.nan, np.nan, np.nan, time.perf_counter() - t0))
            continue
        wall = time.perf_counter() - t0
        mean_err = float(jnp.max(jnp.abs(x.mean(0) - post_mean) / post_sd))
        sd_err = float(jnp.max(jnp.abs(x.std(0) / post_sd - 1)))
        ksd = result.trace["ksd"]
        traces[(scale, name, eps)] = ksd
        rows.append((scale, name, eps, mean_err, sd_err, float(ksd[-1]), wall))

# %% [markdown]
# ## Results
#
# `mean err` is the largest over the 5 coordinates of |particle mean - posterior mean| in
# posterior sds; `sd err` the largest |particle sd / posterior sd - 1|; `KSD` the IMQ kernel
# Stein discrepancy of the particles at the last step (`result.trace["ksd"]`, in the
# unconstrained space). The KSD depends on the scale of the target, so compare it within a
# scale only. A fit is "ok" when mean err < 0.1 and sd err < 0.15.
#
# What to expect (full setting, these seeds): Coin SVGD meets both thresholds at all three
# scales with the same call (mean err 0.001 / 0.014 / 0.010 sd). Each SVGD optimizer has a
# range of good step sizes at scale 1 (AdaGrad 0.01-0.05, `sgd` 0.05-0.5), but the range moves
# with the scale of the posterior: at scale 100 only the largest AdaGrad step (0.5) gets there
# and the default 0.05 misses the means by 0.39 sd; at scale 0.01 no step size in the grid
# works (the default misses by 2.9 sd) and every `sgd` run diverges. The particles start
# uniformly in (-2, 2), hundreds of posterior sds away from a posterior of width 0.003-0.01:
# a fixed step has to both travel that far and then resolve the posterior's width, and
# AdaGrad's normalised steps keep the particles jittering at about the step size (the noisy
# KSD plateaus in the plot). Coin betting's moves grow while the direction keeps its sign and
# shrink when it flips, so the same call does both.

# %%
def ok_fit(mean_err, sd_err):
    return bool(mean_err < 0.1 and sd_err < 0.15)  # False for a diverged run (NaN)


def cell(v, width, spec):
    return f"{'diverged':>{width}}" if np.isnan(v) else f"{v:>{width}{spec}}"


columns = [("scale", 6), ("method", 12), ("step", 6), ("mean err (sd)", 13), ("sd err", 8),
           ("final KSD", 10), ("wall s", 6), ("ok", 3)]
print()
print("| " + " | ".join(f"{name:>{w}}" if name != "method" else f"{name:<{w}}"
                        for name, w in columns) + " |")
print("|" + "|".join("-" * (w + 2) for _, w in columns) + "|")
for scale, name, eps, mean_err, sd_err, ksd, wall in rows:
    step = "-" if eps is None else f"{eps:g}"
    ok = "yes" if ok_fit(mean_err, sd_err) else "no"
    print(f"| {scale:>6g} | {name:<12} | {step:>6} | {cell(mean_err, 13, '.3f')} "
          f"| {cell(sd_err, 8, '.3f')} | {cell(ksd, 10, '.3g')} | {wall:>6.2f} | {ok:>3} |")
first_runs = f"{min(compile_times):.1f}-{max(compile_times):.1f} s"
print(f"\nwall s: one run of {NUM_STEPS} steps, {NUM_PARTICLES} particles, already compiled. "
      f"The first run of each engine (compilation included) took {first_runs}.")


def count_ok(method):
    return sum(1 for r in rows if r[1] == method and ok_fit(r[3], r[4]))


print(f"fits within the thresholds: CoinSVGD {count_ok('CoinSVGD')} of {len(SCALES)} scales; "
      f"SVGD AdaGrad {count_ok('SVGD AdaGrad')} and SVGD sgd {count_ok('SVGD sgd')} "
      f"of {len(SCALES) * len(STEP_SIZES)} (scale, step size) pairs each")

# %% [markdown]
# ## KSD traces
#
# One panel per scale: the KSD of the particles at every step, log scale. Colours go from
# small (light) to large (dark) step sizes; solid lines are AdaGrad, dashed lines plain `sgd`,
# the thick black line Coin SVGD. Diverged runs have no line.

# %%
fig, axes = plt.subplots(1, len(SCALES), figsize=(5 * len(SCALES), 4), sharex=True)
colours = plt.cm.viridis(np.linspace(0.85, 0.1, len(STEP_SIZES)))
for ax, scale in zip(axes, SCALES):
    for (s_, name, eps), ksd in traces.items():
        if s_ != scale:
            continue
        if name == "CoinSVGD":
            ax.plot(ksd, color="black", lw=2.5, label="CoinSVGD (no step size)", zorder=3)
        else:
            c = colours[STEP_SIZES.index(eps)]
            ax.plot(ksd, color=c, lw=1.2, ls="-" if name == "SVGD AdaGrad" else "--",
                    label=f"{name} {eps:g}")
    ax.set_yscale("log")
    ax.set_title(f"posterior scale x{scale:g}")
    ax.set_xlabel("step")
axes[0].set_ylabel("KSD (IMQ)")
# one legend entry per setting, whether or not it diverged in the first panel
handles = [plt.Line2D([], [], color="black", lw=2.5, label="CoinSVGD (no step size)")]
handles += [plt.Line2D([], [], color=colours[i], ls=ls, label=f"{name} {eps:g}")
            for name, ls in (("SVGD AdaGrad", "-"), ("SVGD sgd", "--"))
            for i, eps in enumerate(STEP_SIZES)]
fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
fig.tight_layout()

try:
    plot_dir = Path(__file__).resolve().parent
except NameError:  # in a notebook
    plot_dir = Path.cwd()
# GFLOW_FIGURES_DIR: where to write the figure instead (the tests use a temporary folder)
plot_path = Path(os.environ.get("GFLOW_FIGURES_DIR") or plot_dir) / "coin_vs_svgd.png"
fig.savefig(plot_path, dpi=110, bbox_inches="tight")
print(f"saved {plot_path}")
