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
# # Quickstart: SVGD vs NUTS on a Bayesian logistic regression
#
# We fit a Bayesian logistic regression to the Wisconsin breast cancer data (569 tumours,
# 30 features, binary diagnosis) twice: with Stein variational gradient descent from
# `numpyro_gflow`, and with NumPyro's NUTS as the reference. Then we compare the two
# posteriors parameter by parameter.
#
# This file is a [jupytext](https://jupytext.readthedocs.io) "percent" notebook: open it as
# a notebook, or run it as a plain script (`python examples/quickstart.py`, or `make demo`).
# With `GFLOW_EXAMPLE_SMOKE=1` in the environment it runs far fewer steps and samples (what
# the test suite does); the numbers are then rougher.

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
from numpyro_gflow.datasets import BREAST_CANCER_CLASSES, load_breast_cancer  # noqa: E402

SMOKE = os.environ.get("GFLOW_EXAMPLE_SMOKE", "") not in ("", "0")
SVGD_STEPS = 200 if SMOKE else 2000
NUM_WARMUP, NUM_SAMPLES = (200, 200) if SMOKE else (500, 1000)

# %% [markdown]
# ## Data
#
# `numpyro_gflow.datasets.load_breast_cancer()` reads scikit-learn's copy of the UCI Breast
# Cancer Wisconsin (Diagnostic) data, which ships with the package (source and licence:
# `numpyro_gflow/datasets/README.md`): 30 features and the target per tumour (0 = malignant,
# 1 = benign), the features standardised (mean 0, sd 1). The model has its own intercept, so
# no column of ones is added.

# %%
X_np, y_np = load_breast_cancer()
class_names = BREAST_CANCER_CLASSES
N, D = X_np.shape
X, y = jnp.asarray(X_np, dtype=jnp.float32), jnp.asarray(y_np)
print(f"data: N={N} rows, D={D} features; classes {class_names}; "
      f"{int(y_np.sum())} of {N} are class 1 ({class_names[1]})")

# %% [markdown]
# ## Model

# %%
def model(X, y=None):
    d = X.shape[1]
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(logits=X @ w + b), obs=y)


# %% [markdown]
# ## SVGD
#
# 100 particles, 2000 steps. The first `run` compiles the whole loop (one `lax.scan`); a
# second `run` with inputs of the same shapes reuses the compiled program, so timing it shows
# the cost of the steps alone.

# %%
svgd = gf.SVGD(model, num_particles=100, step_size=0.05)

t0 = time.perf_counter()
result = svgd.run(jax.random.key(0), SVGD_STEPS, X, y)
svgd_samples = jax.block_until_ready(result.get_samples())
t_svgd = time.perf_counter() - t0

t0 = time.perf_counter()
result_again = svgd.run(jax.random.key(0), SVGD_STEPS, X, y, progress_bar=False)
jax.block_until_ready(result_again.get_samples())
t_svgd_again = time.perf_counter() - t0

print(result)
objective = result.trace["stein_sq_norm"]
print(f"SVGD objective (stein_sq_norm): step 1 {objective[0]:.3g}, "
      f"step {len(objective)} {objective[-1]:.3g}")

# %% [markdown]
# The result converts to an ArviZ `DataTree` (posterior, log-likelihood, observed data,
# per-particle log density, and the per-step trace):

# %%
dt = result.to_arviz()
print("ArviZ groups:", sorted(dt.children))

# %% [markdown]
# ## NUTS (reference)

# %%
mcmc = MCMC(NUTS(model), num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES, num_chains=1)
t0 = time.perf_counter()
mcmc.run(jax.random.key(1), X, y)
nuts_samples = jax.block_until_ready(mcmc.get_samples())
t_nuts = time.perf_counter() - t0
num_divergences = int(mcmc.get_extra_fields()["diverging"].sum())
print(f"NUTS: {num_divergences} divergent transitions")

# %% [markdown]
# ## Comparison
#
# Each parameter's SVGD posterior mean and sd against NUTS's, with the difference of means
# in units of the NUTS posterior sd and the ratio of sds (SVGD / NUTS).
#
# What to expect: the means should agree closely. The sds need not: with a fixed, small set
# of particles in a few dozen dimensions SVGD is known to underestimate posterior spread
# ("variance collapse"; Ba et al., *Understanding the Variance Collapse of SVGD in High
# Dimensions*, ICLR 2022). The printed sd ratios show how much, for this model and data.

# %%
def flat_params(samples):
    """(num_draws, 1 + D): intercept first, then the weights."""
    return np.column_stack([np.asarray(samples["b"]), np.asarray(samples["w"])])


names = ["b"] + [f"w[{i}]" for i in range(D)]
theta_svgd, theta_nuts = flat_params(svgd_samples), flat_params(nuts_samples)
mean_svgd, sd_svgd = theta_svgd.mean(0), theta_svgd.std(0)
mean_nuts, sd_nuts = theta_nuts.mean(0), theta_nuts.std(0)
z_diff = (mean_svgd - mean_nuts) / sd_nuts
sd_ratio = sd_svgd / sd_nuts


def predictive_accuracy(theta):
    """Accuracy on the training data of the posterior predictive P(y=1 | x) > 1/2."""
    logits = theta[:, :1].T + X_np @ theta[:, 1:].T        # (N, num_draws)
    prob = (1.0 / (1.0 + np.exp(-logits))).mean(axis=1)
    return float(np.mean((prob > 0.5) == (y_np == 1)))


acc_svgd, acc_nuts = predictive_accuracy(theta_svgd), predictive_accuracy(theta_nuts)

print()
print(f"{'param':<7}{'SVGD mean':>11}{'SVGD sd':>9}{'NUTS mean':>11}{'NUTS sd':>9}"
      f"{'diff/NUTS sd':>14}{'sd ratio':>10}")
for i in range(9):  # intercept and the first 8 weights
    print(f"{names[i]:<7}{mean_svgd[i]:>11.3f}{sd_svgd[i]:>9.3f}{mean_nuts[i]:>11.3f}"
          f"{sd_nuts[i]:>9.3f}{z_diff[i]:>+14.2f}{sd_ratio[i]:>10.2f}")
worst = int(np.argmax(np.abs(z_diff)))
print()
print(f"over all {len(names)} parameters: max |mean diff| = {np.abs(z_diff).max():.2f} NUTS sds "
      f"(at {names[worst]}); median sd ratio SVGD/NUTS = {np.median(sd_ratio):.2f} "
      f"(range {sd_ratio.min():.2f}-{sd_ratio.max():.2f})")
print(f"posterior predictive accuracy on the training data: SVGD {acc_svgd:.3f}, "
      f"NUTS {acc_nuts:.3f}")
print(f"wall time: SVGD {t_svgd:.1f} s incl. compilation ({t_svgd_again:.1f} s for a second run, "
      f"already compiled); NUTS {t_nuts:.1f} s incl. compilation "
      f"({mcmc.num_warmup} warmup + {mcmc.num_samples} samples, 1 chain)")

# %% [markdown]
# ## Plot
#
# Left: the SVGD objective per step. Right: posterior mean ± sd of every parameter.

# %%
fig, (ax_obj, ax_par) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2]})
ax_obj.semilogy(np.arange(1, len(objective) + 1), objective)
ax_obj.set_xlabel("step")
ax_obj.set_ylabel("stein_sq_norm")
ax_obj.set_title("SVGD objective")

idx = np.arange(len(names))
ax_par.errorbar(idx - 0.15, mean_nuts, yerr=sd_nuts, fmt="o", ms=3, capsize=2, label="NUTS")
ax_par.errorbar(idx + 0.15, mean_svgd, yerr=sd_svgd, fmt="s", ms=3, capsize=2, label="SVGD")
ax_par.axhline(0.0, color="grey", lw=0.5)
ax_par.set_xticks(idx)
ax_par.set_xticklabels(names, rotation=90, fontsize=7)
ax_par.set_ylabel("posterior mean ± sd")
ax_par.set_title("SVGD vs NUTS, breast cancer logistic regression")
ax_par.legend()
fig.tight_layout()

try:
    plot_dir = Path(__file__).resolve().parent
except NameError:  # in a notebook
    plot_dir = Path.cwd()
# GFLOW_FIGURES_DIR: where to write the figure instead (the tests use a temporary folder)
plot_path = Path(os.environ.get("GFLOW_FIGURES_DIR") or plot_dir) / "quickstart.png"
fig.savefig(plot_path, dpi=120)
print(f"saved {plot_path}")
