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
# # SVGD vs NUTS, side by side, on a small linear regression
#
# A model small enough to look at every marginal: Bayesian linear regression with three
# weights and a HalfNormal noise scale, on synthetic data generated here with a fixed key.
# We fit it with Stein variational gradient descent from `numpyro_gflow` and with NumPyro's
# NUTS, turn both fits into ArviZ `DataTree`s, and plot the two posteriors on the same axes
# with ArviZ 1.x (`arviz_plots`).
#
# This file is a [jupytext](https://jupytext.readthedocs.io) "percent" notebook: open it as
# a notebook, or run it as a plain script (`python examples/svgd_vs_nuts.py`). With
# `GFLOW_EXAMPLE_SMOKE=1` in the environment it runs far fewer steps and samples (what the
# test suite does); the numbers are then rougher.

# %%
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import arviz as az  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import xarray as xr  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

import numpyro_gflow as gf  # noqa: E402

SMOKE = os.environ.get("GFLOW_EXAMPLE_SMOKE", "") not in ("", "0")
SVGD_STEPS = 200 if SMOKE else 2000
NUM_WARMUP, NUM_SAMPLES = (200, 200) if SMOKE else (1000, 2000)
print(f"setting: {'smoke (GFLOW_EXAMPLE_SMOKE=1)' if SMOKE else 'full'}: SVGD {SVGD_STEPS} steps; "
      f"NUTS {NUM_WARMUP} warmup + {NUM_SAMPLES} samples")

# %% [markdown]
# ## Data and model
#
# 50 rows, 3 standard-normal features, true weights `(1, -0.5, 0.2)` and noise sd 0.5.

# %%
N, D = 50, 3
true_w, true_sigma = jnp.array([1.0, -0.5, 0.2]), 0.5
k_x, k_noise = jax.random.split(jax.random.key(1))
X = jax.random.normal(k_x, (N, D))
y = X @ true_w + true_sigma * jax.random.normal(k_noise, (N,))


def model(X, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, sigma), obs=y)


# %% [markdown]
# ## SVGD
#
# 100 particles. `sigma` lives on (0, inf); the particles move in NumPyro's unconstrained
# space (`log sigma`), and `get_samples()` / `to_arviz()` return constrained values.

# %%
t0 = time.perf_counter()
result = gf.SVGD(model, num_particles=100, step_size=0.05).run(
    jax.random.key(0), SVGD_STEPS, X, y, progress_bar=False)
svgd_samples = jax.block_until_ready(result.get_samples())
t_svgd = time.perf_counter() - t0
print(result)
objective = result.trace["stein_sq_norm"]
print(f"SVGD objective (stein_sq_norm): step 1 {objective[0]:.3g}, step {len(objective)} "
      f"{objective[-1]:.3g}")

# %% [markdown]
# ## NUTS (reference)

# %%
mcmc = MCMC(NUTS(model), num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES, num_chains=1,
            progress_bar=False)
t0 = time.perf_counter()
mcmc.run(jax.random.key(2), X, y)
nuts_samples = jax.block_until_ready(mcmc.get_samples())
t_nuts = time.perf_counter() - t0

# %% [markdown]
# ## Both fits as ArviZ DataTrees
#
# `result.to_arviz()` gives the SVGD particles as one "chain" of 100 draws (plus the
# log-likelihood, observed data and the per-step trace); `az.from_numpyro` does the same for
# the NUTS run.

# %%
dt_svgd = result.to_arviz()
dt_nuts = az.from_numpyro(mcmc)
print("SVGD DataTree groups:", sorted(dt_svgd.children))
print("NUTS DataTree groups:", sorted(dt_nuts.children))

# %% [markdown]
# ## Numeric comparison
#
# Posterior mean and sd of each parameter, the difference of means in NUTS sds, and the sd
# ratio SVGD / NUTS. What to expect (full setting, this seed): means within 0.1 NUTS sd and
# sd ratios 0.95-1.01. SVGD's default kernel has its bandwidth fixed at 2 d in the Laplace
# approximation's whitened coordinates, where it moves its particles; with the classic median
# heuristic (`kernel=gf.RBFKernel()`) the ratios here were 0.83-0.90, and SVGD's spread
# collapses more as the dimension grows (0.15-0.54 in the quickstart's 31 dimensions).

# %%
def flat(samples):
    return np.column_stack([np.asarray(samples["w"]), np.asarray(samples["sigma"])])


names = [f"w[{i}]" for i in range(D)] + ["sigma"]
truth = np.append(np.asarray(true_w), true_sigma)
th_svgd, th_nuts = flat(svgd_samples), flat(nuts_samples)
m_s, s_s, m_n, s_n = th_svgd.mean(0), th_svgd.std(0), th_nuts.mean(0), th_nuts.std(0)
print()
print(f"{'param':<7}{'truth':>7}{'SVGD mean':>11}{'SVGD sd':>9}{'NUTS mean':>11}{'NUTS sd':>9}"
      f"{'diff/NUTS sd':>14}{'sd ratio':>10}")
for i, name in enumerate(names):
    print(f"{name:<7}{truth[i]:>7.2f}{m_s[i]:>11.3f}{s_s[i]:>9.3f}{m_n[i]:>11.3f}{s_n[i]:>9.3f}"
          f"{(m_s[i] - m_n[i]) / s_n[i]:>+14.2f}{s_s[i] / s_n[i]:>10.2f}")
print(f"wall time incl. compilation: SVGD {t_svgd:.1f} s ({SVGD_STEPS} steps, 100 particles); "
      f"NUTS {t_nuts:.1f} s ({NUM_WARMUP} warmup + {NUM_SAMPLES} samples)")

# %% [markdown]
# ## Plot
#
# `az.plot_dist` overlays several fits when their posteriors share a `model` dimension (it
# builds one itself from a dict `{"SVGD": dt_svgd, "NUTS": dt_nuts}`): one panel per
# parameter, one colour per engine, each with its mean and 94% credible interval underneath.
# The two fits have different numbers of draws (100 particles, 2000 NUTS draws), so we
# stack them ourselves with an explicit outer join, which pads the SVGD draws with NaN, and
# ask for NaN-skipping statistics. (Passing the dict would do the same join implicitly, and
# newer xarray versions warn about that.)

# %%
posteriors = xr.concat(
    [dt_svgd.posterior.to_dataset(), dt_nuts.posterior.to_dataset()],
    dim="model", join="outer",
).assign_coords(model=["SVGD", "NUTS"])
pc = az.plot_dist(
    posteriors, var_names=["w", "sigma"], backend="matplotlib",
    stats={"credible_interval": {"skipna": True}, "point_estimate": {"skipna": True}},
    figure_kwargs={"figsize": (12, 3.6)},
)
pc.add_legend("model")

try:
    plot_dir = Path(__file__).resolve().parent
except NameError:  # in a notebook
    plot_dir = Path.cwd()
# GFLOW_FIGURES_DIR: where to write the figure instead (the tests use a temporary folder)
plot_path = Path(os.environ.get("GFLOW_FIGURES_DIR") or plot_dir) / "svgd_vs_nuts.png"
pc.savefig(plot_path, dpi=120)
print(f"saved {plot_path}")
