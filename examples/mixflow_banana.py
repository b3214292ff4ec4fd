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
# # MixFlows on a banana and a funnel: samples, density, ELBO vs flow length
#
# A MixFlow (Xu, Chen & Campbell, ICML 2023) is the average of repeated applications of a
# measure-preserving-ish map, here uncorrected Hamiltonian dynamics with a deterministic
# momentum refreshment, to a simple reference distribution. It needs no training beyond a
# mean-field Gaussian for the reference, and unlike MCMC it has a density and an ELBO.
#
# We fit `numpyro_gflow.MixFlow` to the authors' banana and funnel targets, compare its draws
# with exact draws and with NumPyro's NUTS, plot its (latent) density next to its samples, and
# follow the ELBO as the flow length grows.
#
# This file is a [jupytext](https://jupytext.readthedocs.io) "percent" notebook: open it as a
# notebook, or run it as a script (`python examples/mixflow_banana.py`). With
# `GFLOW_EXAMPLE_SMOKE=1` it runs far shorter flows (what the test suite does).

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
from numpyro.infer import MCMC, NUTS  # noqa: E402

import numpyro_gflow as gf  # noqa: E402
from numpyro_gflow.diagnostics import energy_distance  # noqa: E402

SMOKE = os.environ.get("GFLOW_EXAMPLE_SMOKE", "") not in ("", "0")
FLOW_LENGTH = 30 if SMOKE else 1000
NUM_DRAWS = 300 if SMOKE else 2000
ELBO_LENGTHS = (5,) if SMOKE else (10, 50, 100, 200, 500, 1000)
GRID = 10 if SMOKE else 60
REFERENCE_STEPS = 1000 if SMOKE else 5000
NUTS_WARMUP = 300 if SMOKE else 1000
print(f"setting: {'smoke' if SMOKE else 'full'}: flow length {FLOW_LENGTH}, {NUM_DRAWS} draws")


# %% [markdown]
# ## Targets
#
# The authors' banana (x1 ~ N(0, 10²), x2 | x1 ~ N(0.1 x1² − 10, 1)) and funnel
# (x1 ~ N(9, 6²), x2 | x1 ~ N(0, exp(x1 / 2))), both with exact samplers.

# %%
def banana():
    x1 = numpyro.sample("x1", dist.Normal(0.0, 10.0))
    numpyro.sample("x2", dist.Normal(0.1 * x1**2 - 10.0, 1.0))


def funnel():
    x1 = numpyro.sample("x1", dist.Normal(9.0, 6.0))
    numpyro.sample("x2", dist.Normal(0.0, jnp.exp(x1 / 4.0)))


def exact(name, n, seed=0):
    rng = np.random.default_rng(seed)
    if name == "banana":
        x1 = rng.normal(0, 10, n)
        return np.stack([x1, rng.normal(0.1 * x1**2 - 10, 1)], 1)
    x1 = rng.normal(9, 6, n)
    return np.stack([x1, rng.normal(0, np.exp(x1 / 4))], 1)


def as_matrix(samples):
    return np.stack([np.asarray(samples["x1"]), np.asarray(samples["x2"])], 1)


# %% [markdown]
# ## Samples: MixFlow vs NUTS vs exact
#
# The default step-size rule picks the largest leapfrog step whose one-map trajectory keeps the
# energy error small (mean Metropolis acceptance ≥ 0.9, were there a Metropolis step); the
# leapfrog counts are the authors' (50 on the banana, 80 on the funnel).

# %%
fits, draws = {}, {}
for name, model, L in [("banana", banana, 50), ("funnel", funnel, 80)]:
    t = time.perf_counter()
    res = gf.MixFlow(model, flow_length=FLOW_LENGTH, num_leapfrog=L, num_draws=NUM_DRAWS,
                     reference="meanfield").run(
        jax.random.key(0), REFERENCE_STEPS, progress_bar=False)
    mf_s = time.perf_counter() - t
    t = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_warmup=NUTS_WARMUP, num_samples=NUM_DRAWS, progress_bar=False)
    mcmc.run(jax.random.key(1))
    nuts_s = time.perf_counter() - t
    truth = exact(name, NUM_DRAWS)
    fits[name] = res
    draws[name] = {"MixFlow": as_matrix(res.get_samples()), "NUTS": as_matrix(mcmc.get_samples()),
                   "exact": truth}
    ed = {k: energy_distance(v, exact(name, NUM_DRAWS, seed=7), scale_by="y")
          for k, v in draws[name].items()}
    print(f"{name}: energy distance to {NUM_DRAWS} exact draws: MixFlow {ed['MixFlow']:.4f} "
          f"({mf_s:.1f} s, step {res.stats['step_size']:.3g}), NUTS {ed['NUTS']:.4f} "
          f"({nuts_s:.1f} s), other exact draws {ed['exact']:.4f}")

# %% [markdown]
# ## The density and the samples agree
#
# `result.log_q` is the MixFlow's density of the latent alone: the flow's density lives on
# (x, momentum, u), so it is averaged over momentum and u by importance sampling. On a grid it
# integrates to about 1, and its contours sit on the samples.

# %%
res = fits["banana"]
x = draws["banana"]["MixFlow"]
lo, hi = np.quantile(x, 0.002, 0), np.quantile(x, 0.998, 0)
g1, g2 = np.linspace(lo[0], hi[0], GRID), np.linspace(lo[1], hi[1], GRID)
grid = np.stack(np.meshgrid(g1, g2, indexing="ij"), -1).reshape(-1, 2)
log_q = np.asarray(res.log_q(jnp.asarray(grid, jnp.float32), jax.random.key(3), num_aux=16))
cell = (g1[1] - g1[0]) * (g2[1] - g2[0])
print(f"banana: MixFlow density summed over the grid: {np.exp(log_q).sum() * cell:.3f} "
      "(the grid cuts off the far tails)")

# %% [markdown]
# ## ELBO vs flow length
#
# The ELBO uses the paper's step-size rule (best ELBO on the grid): the augmented-space ELBO
# penalises momenta that stray from their Laplace law, which hardly matters for where the
# positions go; the acceptance rule above takes larger steps, better for samples, worse for
# this ELBO. The banana is normalised, so its ELBO is at most 0.

# %%
elbos = []
for n in ELBO_LENGTHS:
    r = gf.MixFlow(banana, flow_length=n, num_leapfrog=50, step_size_rule="elbo",
                  reference="meanfield",
                   num_draws=256).run(jax.random.key(0), REFERENCE_STEPS, progress_bar=False)
    elbos.append((n, r.stats["elbo"], r.stats["elbo_se"]))
    print(f"banana, N = {n:5d}: ELBO {r.stats['elbo']:.3f} +- {r.stats['elbo_se']:.3f} "
          f"(mean-field reference {r.stats['reference_elbo']:.3f})")

# %%
fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
ax = axes[0]
ax.contour(g1, g2, np.exp(log_q).reshape(GRID, GRID).T, levels=8, cmap="viridis")
ax.scatter(*x[:800].T, s=2, c="k", alpha=0.3)
ax.set_title("banana: MixFlow density and draws")
for ax, name in zip(axes[1:3], ["banana", "funnel"]):
    for label, c in [("exact", "0.6"), ("NUTS", "tab:orange"), ("MixFlow", "tab:blue")]:
        ax.scatter(*draws[name][label][:800].T, s=2, alpha=0.4, c=c, label=label)
    ax.set_title(name)
    ax.legend(markerscale=5)
axes[2].set_yscale("symlog")
n, e, se = map(np.asarray, zip(*elbos))
axes[3].errorbar(n, e, 2 * se, marker="o")
axes[3].axhline(fits["banana"].stats["reference_elbo"], ls="--", c="gray",
                label="mean-field reference")
axes[3].set_xscale("log")
axes[3].set_xlabel("flow length N")
axes[3].set_title("banana: ELBO vs flow length")
axes[3].legend()
fig.tight_layout()
# GFLOW_FIGURES_DIR: where to write the figure instead (the tests use a temporary folder)
out_dir = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
out = Path(os.environ.get("GFLOW_FIGURES_DIR") or out_dir) / "mixflow_banana.png"
fig.savefig(out, dpi=90)
print(f"saved {out}")
