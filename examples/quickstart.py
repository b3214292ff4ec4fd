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
# # Quickstart: which engine matches NUTS on a Bayesian logistic regression?
#
# We fit a Bayesian logistic regression to the Wisconsin breast cancer data (569 tumours,
# 30 features, binary diagnosis, 31 parameters) with NumPyro's NUTS as the reference and with
# four `numpyro_gflow` engines, each with its defaults: the two density engines that the
# benchmark tables recommend (MixFlow, a mixed variational flow; FB-GVI, a full-covariance
# Gaussian) and two particle engines (Coin KSD descent, the most accurate particle
# engine on the posteriordb table, and plain SVGD). Then one table: how far each engine's
# means and sds are from NUTS's, how long it took (compilation included, and again
# compiled), and whether the result's own checks (`result.diagnose()`) trust it.
#
# This file is a [jupytext](https://jupytext.readthedocs.io) "percent" notebook: open it as
# a notebook, or run it as a plain script (`python examples/quickstart.py`, or `make demo`).
# With `GFLOW_EXAMPLE_SMOKE=1` in the environment it runs far fewer steps and samples (what
# the test suite does); the numbers are then rougher.

# %%
import os
import time
import warnings
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
STEPS = 100 if SMOKE else 1000
NUM_WARMUP, NUM_SAMPLES, NUM_CHAINS = (200, 200, 1) if SMOKE else (1000, 2000, 2)

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
# ## NUTS (the reference)
#
# Two chains of 1000 warmup + 2000 draws, one after the other.

# %%
mcmc = MCMC(NUTS(model), num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES, num_chains=NUM_CHAINS,
            chain_method="sequential", progress_bar=False)
t0 = time.perf_counter()
mcmc.run(jax.random.key(1), X, y)
nuts_samples = jax.block_until_ready(mcmc.get_samples())
t_nuts = time.perf_counter() - t0
t_nuts_warm = float("nan")
if not SMOKE:
    t0 = time.perf_counter()
    mcmc.run(jax.random.key(2), X, y)     # compiled: the sampling alone
    jax.block_until_ready(mcmc.get_samples())
    t_nuts_warm = time.perf_counter() - t0
num_divergences = int(mcmc.get_extra_fields()["diverging"].sum())
print(f"NUTS: {NUM_CHAINS} x ({NUM_WARMUP} + {NUM_SAMPLES}), {num_divergences} divergent "
      f"transitions, {t_nuts:.1f} s (compiled: {t_nuts_warm:.1f} s)")

# %% [markdown]
# ## The engines
#
# Each engine is built with its defaults and run for `STEPS` steps; `run` ends with the
# result's own checks (a density engine: Pareto k-hat of importance weights; a particle
# engine: a kernel Stein discrepancy test; every engine: a trace that has stopped moving) and
# warns when they fail. A second `run` of the same object reuses its compiled programs.

# %%
ENGINES = {
    "MixFlow": gf.MixFlow(model),
    "FBGVI": gf.FBGVI(model),
    "CoinKSDD": gf.CoinKSDD(model),
    "SVGD": gf.SVGD(model),
}
if SMOKE:   # the test suite's setting: the cheapest density engine to compile, one particle
    ENGINES = {"IsoGaussianMixtureVI": gf.IsoGaussianMixtureVI(model), "SVGD": ENGINES["SVGD"]}
results, walls = {}, {}
for name, engine in ENGINES.items():
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True):     # the verdict goes into the table instead
        warnings.simplefilter("always")
        result = engine.run(jax.random.key(0), STEPS, X, y, progress_bar=False)
    jax.block_until_ready(result.get_samples())
    cold = time.perf_counter() - t0
    warm = float("nan")
    if not SMOKE:
        t0 = time.perf_counter()
        again = engine.run(jax.random.key(0), STEPS, X, y, progress_bar=False, diagnose=False)
        jax.block_until_ready(again.get_samples())
        warm = time.perf_counter() - t0
    results[name], walls[name] = result, (cold, warm)
    print(f"{name}: {STEPS} steps, {cold:.1f} s (compiled: {walls[name][1]:.1f} s)")

# %% [markdown]
# Every result converts to an ArviZ `DataTree` (posterior, log-likelihood, observed data,
# per-point log density, and the per-step trace of the objective), and prints a NumPyro-style
# summary with its checks (`gf.print_summary(result)`):

# %%
dt = next(iter(results.values())).to_arviz()
print("ArviZ groups:", sorted(dt.children))

# %% [markdown]
# ## Comparison
#
# Per parameter, the difference of posterior means in units of NUTS's posterior sd and the
# ratio of sds (engine / NUTS); the table shows the worst over the 31 parameters. NUTS's own
# Monte Carlo error is a few hundredths of an sd in the means and a few percent in the sds,
# so "within 0.1 sd and 10 %" is as close as this reference can tell.

# %%
def flat_params(samples):
    """(num_draws, 1 + D): intercept first, then the weights."""
    return np.column_stack([np.asarray(samples["b"]), np.asarray(samples["w"])])


names = ["b"] + [f"w[{i}]" for i in range(D)]
theta_nuts = flat_params(nuts_samples)
mean_nuts, sd_nuts = theta_nuts.mean(0), theta_nuts.std(0)
rows, moments = [], {"NUTS": (mean_nuts, sd_nuts)}
for name, result in results.items():
    # the particles; a density engine's fresh draws (10,000: their own Monte Carlo error in the
    # means is then 0.01 sd, below NUTS's)
    draws = (result.get_samples(1000 if SMOKE else 10_000, jax.random.key(3))
             if result.sampler_available() else result.get_samples())
    theta = flat_params(draws)
    mean, sd = theta.mean(0), theta.std(0)
    moments[name] = (mean, sd)
    err = np.abs(mean - mean_nuts) / sd_nuts
    ratio = sd / sd_nuts
    report = result.diagnostics          # None where run's checks were turned off
    verdict = ("not run" if report is None else "ok" if report["ok"]
               else "flagged: " + ", ".join(report["failed"]))
    rows.append((name, err.max(), ratio.min(), ratio.max(), *walls[name], verdict))

print()
print(f"| {'engine':<9} | {'max |mean diff| (NUTS sd)':>25} | {'sd ratio range':>14} | "
      f"{'wall s (compiled)':>17} | {'own checks':<32} |")
print(f"|{'-' * 11}|{'-' * 27}|{'-' * 16}|{'-' * 19}|{'-' * 34}|")
for name, e, lo, hi, cold, warm, verdict in rows:
    print(f"| {name:<9} | {e:>25.3f} | {f'{lo:.2f}-{hi:.2f}':>14} | "
          f"{f'{cold:.1f} ({warm:.1f})':>17} | {verdict:<32} |")
print(f"| {'NUTS':<9} | {'(reference)':>25} | {'':>14} | "
      f"{f'{t_nuts:.1f} ({t_nuts_warm:.1f})':>17} | {f'{num_divergences} divergences':<32} |")
lead = rows[0]
print()
print(f"{lead[0]} is within {lead[1]:.2f} NUTS sds on every mean and its sds within "
      f"{max(1 - lead[2], lead[3] - 1):.0%} of NUTS's.")
narrow = [r for r in rows if r[2] < 0.9]
if narrow:
    print("Some sds too small: " + ", ".join(
        f"{r[0]} (sds {r[2]:.2f}-{r[3]:.2f} of NUTS's; own checks: {r[6]})" for r in narrow)
        + ". With 100 particles in 31 dimensions the particle engines' spread collapses "
        "(Ba et al., ICLR 2022).")


def predictive_accuracy(theta):
    """Accuracy on the training data of the posterior predictive P(y=1 | x) > 1/2."""
    logits = theta[:, :1].T + X_np @ theta[:, 1:].T        # (N, num_draws)
    prob = (1.0 / (1.0 + np.exp(-logits))).mean(axis=1)
    return float(np.mean((prob > 0.5) == (y_np == 1)))


print("posterior predictive accuracy on the training data: " + ", ".join(
    f"{name} {predictive_accuracy(flat_params(r.get_samples())):.3f}"
    for name, r in results.items()) + f", NUTS {predictive_accuracy(theta_nuts):.3f}")

# %% [markdown]
# ## Plot
#
# Posterior mean ± sd of every parameter, NUTS and the four engines side by side.

# %%
fig, ax = plt.subplots(figsize=(13, 4.5))
idx = np.arange(len(names))
width = 0.8 / len(moments)
for k, (name, (mean, sd)) in enumerate(moments.items()):
    ax.errorbar(idx - 0.4 + (k + 0.5) * width, mean, yerr=sd, fmt="o", ms=2.5, capsize=1.5,
                lw=0.8, label=name)
ax.axhline(0.0, color="grey", lw=0.5)
ax.set_xticks(idx)
ax.set_xticklabels(names, rotation=90, fontsize=7)
ax.set_ylabel("posterior mean ± sd")
ax.set_title("Breast cancer logistic regression: NUTS and four numpyro-gflow engines")
ax.legend(ncol=len(moments), fontsize=8)
fig.tight_layout()

try:
    plot_dir = Path(__file__).resolve().parent
except NameError:  # in a notebook
    plot_dir = Path.cwd()
# GFLOW_FIGURES_DIR: where to write the figure instead (the tests use a temporary folder)
plot_path = Path(os.environ.get("GFLOW_FIGURES_DIR") or plot_dir) / "quickstart.png"
fig.savefig(plot_path, dpi=120)
print(f"saved {plot_path}")
