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
# # A four-mode posterior: isotropic Gaussian mixture VI vs NUTS vs AutoNormal
#
# A posterior with several well-separated modes is where a single Gaussian fails and a
# mixture can help. We fit one with `IsoGaussianMixtureVI` from `numpyro_gflow` (a uniform
# mixture of isotropic Gaussians moved by a Wasserstein gradient flow; Petit-Talamon, Lambert
# & Korba, NeurIPS 2025), with both of its variance updates ("ibw": isotropic
# Bures-Wasserstein, "md": entropic mirror descent), and compare with NumPyro's NUTS (a few
# chains) and NumPyro's SVI with an `AutoNormal` guide. Then we count how much mass each
# method puts near each mode.
#
# This file is a [jupytext](https://jupytext.readthedocs.io) "percent" notebook: open it as
# a notebook, or run it as a plain script (`python examples/multimodal_mixture_vi.py`). With
# `GFLOW_EXAMPLE_SMOKE=1` in the environment it runs far fewer steps and samples (what the
# test suite does); the numbers are then rougher.

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
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import AutoNormal  # noqa: E402
from numpyro.infer.initialization import init_to_uniform  # noqa: E402

import numpyro_gflow as gf  # noqa: E402

SMOKE = os.environ.get("GFLOW_EXAMPLE_SMOKE", "") not in ("", "0")
MIX_STEPS = 300 if SMOKE else 2000
SVI_STEPS = 2000 if SMOKE else 20000
NUM_CHAINS = 4
NUM_WARMUP, NUM_SAMPLES = (200, 200) if SMOKE else (1000, 2000)
NUM_DRAWS = 1000 if SMOKE else 8000          # draws from each fitted approximation
print(f"setting: {'smoke (GFLOW_EXAMPLE_SMOKE=1)' if SMOKE else 'full'}: mixture VI {MIX_STEPS} "
      f"steps; AutoNormal {SVI_STEPS} steps; NUTS {NUM_CHAINS} chains x ({NUM_WARMUP} warmup + "
      f"{NUM_SAMPLES} samples)")

# %% [markdown]
# ## Model
#
# Two parameters with a wide prior, `x ~ N(0, 3^2 I)`, observed only through their squares:
# `y_k ~ N(x_k^2, 0.5^2)`, with `y = (4, 4)`. The data say `x_k = +2` or `x_k = -2` and
# nothing about the sign, so the posterior has four modes, at `(+-2, +-2)`. It factorises over
# the two coordinates and is symmetric under each sign flip, so each mode holds exactly 1/4 of
# the mass. Around a mode the posterior sd is about `0.5 / (2 * 2) = 0.125`: the modes are
# 4 apart, 32 sds, with a density valley of about `e^-32` between them.

# %%
Y = jnp.array([4.0, 4.0])
MODES = np.array([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
MODE_NAMES = ["(+2,+2)", "(-2,+2)", "(-2,-2)", "(+2,-2)"]
RADIUS = 0.5                                  # "near a mode": within 0.5 (4 local sds)


def model(y=None):
    x = numpyro.sample("x", dist.Normal(0.0, 3.0).expand([2]).to_event(1))
    numpyro.sample("y", dist.Normal(x**2, 0.5).to_event(1), obs=y)


def log_posterior(x):
    """Unnormalised log posterior on (..., 2) points, for the contour plot."""
    return (dist.Normal(0.0, 3.0).log_prob(x).sum(-1)
            + dist.Normal(x**2, 0.5).log_prob(Y).sum(-1))


def mode_masses(x):
    """Fraction of the draws within RADIUS of each mode, and the fraction near none."""
    x = np.asarray(x)
    dists = np.linalg.norm(x[:, None, :] - MODES[None], axis=-1)        # (draws, 4)
    near = dists < RADIUS
    return np.append(near.mean(0), 1.0 - near.any(1).mean())


# %% [markdown]
# ## Mixture VI: IBW and MD
#
# Ten components. Their means start at `U(-4, 4)^2` (`init_to_uniform(radius=4)`), each climbs
# its own hill of the log density for 200 Adam steps (`map_steps`, the default), and the
# variances start at the Laplace value at each climbed mean; then the flow runs. The mixture
# weights stay uniform (the algorithm does not learn them), so the mass near a mode is the
# number of components that settled on it, divided by 10: the mixture can find every mode,
# but it weighs them 1/10, 2/10, 3/10, ... rather than 1/4 each.
#
# What to expect (this seed): every mode gets at least one component (4/3/2/1 of them), the
# component sds come out at 0.10-0.14 (the local posterior sd is about 0.125), and IBW and MD
# end at the same place. On this target the climb and the Laplace variances already land
# next to the optimum, so the running ELBO barely moves during the flow.

# %%
mixture_results, mixture_seconds = {}, {}
for update in ("ibw", "md"):
    engine = gf.IsoGaussianMixtureVI(model, num_components=10, variance_update=update,
                                     init_strategy=init_to_uniform(radius=4))
    t0 = time.perf_counter()
    res = engine.run(jax.random.key(0), MIX_STEPS, Y, progress_bar=False)
    jax.block_until_ready(res.state)
    mixture_seconds[update] = time.perf_counter() - t0
    mixture_results[update] = res
    trace = res.trace["elbo"]
    elbo, elbo_se = res.elbo(jax.random.key(1), 4000)
    print(f"{update.upper()}: running ELBO {trace[:20].mean():.3f} (first 20 steps) -> "
          f"{trace[-20:].mean():.3f} (last 20); "
          f"final ELBO {float(elbo):.3f} +- {float(elbo_se):.3f}")
    means, variances = np.asarray(res.state.means), np.asarray(res.state.variances)
    order = np.lexsort(means.T)
    print("  component means:", "  ".join(f"({m[0]:+.2f},{m[1]:+.2f})" for m in means[order]))
    print("  component sds:  ", "  ".join(f"{s:.3f}" for s in np.sqrt(variances[order])))

# %% [markdown]
# The fitted mixture is also a NumPyro guide: `Predictive` draws parameters from it and
# replays the model, here to get posterior predictive draws of `y` (no `y` passed).

# %%
res = mixture_results["ibw"]
predictive = Predictive(model, guide=res.guide, params=res.params, num_samples=NUM_DRAWS)
pred = predictive(jax.random.key(2))
print(f"posterior predictive (IBW mixture): y mean {np.asarray(pred['y']).mean(0).round(2)}, "
      f"sd {np.asarray(pred['y']).std(0).round(2)} (observed {np.asarray(Y)})")

# %% [markdown]
# ## NUTS
#
# Four chains, each from its own random start. A chain has no way through a valley of
# `e^-32`, so each stays on the mode it first reached; how many modes NUTS sees, and with what
# weights, depends on where the chains started (this seed: three modes, one of them twice, so
# NUTS reports 0.5 / 0.25 / 0.25 / 0, with R-hat far above 1 for anyone who looks).

# %%
mcmc = MCMC(NUTS(model), num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES, num_chains=NUM_CHAINS,
            chain_method="sequential", progress_bar=False)
t0 = time.perf_counter()
mcmc.run(jax.random.key(3), Y)
nuts_x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])     # (chains, draws, 2)
t_nuts = time.perf_counter() - t0
for c, chain in enumerate(nuts_x):
    nearest = MODE_NAMES[int(np.argmin(np.linalg.norm(MODES - chain.mean(0), axis=1)))]
    print(f"NUTS chain {c}: mean ({chain.mean(0)[0]:+.2f}, {chain.mean(0)[1]:+.2f}), "
          f"nearest mode {nearest}")

# %% [markdown]
# ## SVI with AutoNormal
#
# A single diagonal Gaussian: it can only sit on one mode (or, worse, between them).

# %%
guide = AutoNormal(model)
svi = SVI(model, guide, optax.adam(0.01), Trace_ELBO())
t0 = time.perf_counter()
svi_result = svi.run(jax.random.key(4), SVI_STEPS, Y, progress_bar=False)
auto_x = np.asarray(guide.sample_posterior(jax.random.key(5), svi_result.params,
                                           sample_shape=(NUM_DRAWS,))["x"])
t_svi = time.perf_counter() - t0
auto_elbo = -float(Trace_ELBO(num_particles=4000).loss(jax.random.key(1), svi_result.params,
                                                         model, guide, Y))
print(f"AutoNormal: mean {auto_x.mean(0).round(2)}, sd {auto_x.std(0).round(3)}; "
      f"ELBO {auto_elbo:.3f}")

# %% [markdown]
# ## Mass near each mode
#
# The exact answer is 0.25 at each mode. The ELBOs can be read against the exact log
# normaliser: the posterior factorises, so `log Z` is twice the log of a one-dimensional
# integral, done here by quadrature, and `log Z - ELBO = KL(q || posterior)`. A perfect fit
# of one mode alone has KL `log 4 = 1.39`; a mixture whose components fit their modes
# perfectly but weigh them `w_k` instead of 1/4 has KL about `sum_k w_k log(4 w_k)`.

# %%
t = np.linspace(-12.0, 12.0, 400_001)
one_dim = (np.exp(-0.5 * (t / 3.0) ** 2) / (3.0 * np.sqrt(2 * np.pi))
           * np.exp(-0.5 * ((4.0 - t**2) / 0.5) ** 2) / (0.5 * np.sqrt(2 * np.pi)))
log_z = 2 * np.log(np.sum(one_dim) * (t[1] - t[0]))
elbos = {"IBW mixture": float(mixture_results["ibw"].elbo(jax.random.key(1), 4000)[0]),
         "MD mixture": float(mixture_results["md"].elbo(jax.random.key(1), 4000)[0]),
         "AutoNormal": auto_elbo}

samples = {
    "IBW mixture": np.asarray(
        mixture_results["ibw"].get_samples(NUM_DRAWS, jax.random.key(6))["x"]),
    "MD mixture": np.asarray(mixture_results["md"].get_samples(NUM_DRAWS, jax.random.key(6))["x"]),
    f"NUTS ({NUM_CHAINS} chains)": nuts_x.reshape(-1, 2),
    "AutoNormal": auto_x,
}
print()
print(f"{'method':<18}" + "".join(f"{m:>10}" for m in MODE_NAMES) + f"{'elsewhere':>11}"
      f"{'KL(q||p)':>10}")
print(f"{'exact':<18}" + "".join(f"{0.25:>10.3f}" for _ in MODE_NAMES) + f"{0.0:>11.3f}"
      f"{0.0:>10.3f}")
for name, x in samples.items():
    masses = mode_masses(x)
    kl = f"{log_z - elbos[name]:>10.3f}" if name in elbos else f"{'-':>10}"
    print(f"{name:<18}" + "".join(f"{v:>10.3f}" for v in masses[:4]) + f"{masses[4]:>11.3f}" + kl)
print(f"(log Z = {log_z:.3f} by quadrature; KL = log Z - ELBO, Monte Carlo standard error ~0.01)")
print()
print(f"wall time incl. compilation: mixture VI {mixture_seconds['ibw']:.1f} s (IBW), "
      f"{mixture_seconds['md']:.1f} s (MD), {MIX_STEPS} steps each; NUTS {t_nuts:.1f} s; "
      f"AutoNormal {t_svi:.1f} s ({SVI_STEPS} steps)")

# %% [markdown]
# ## Plot
#
# The posterior's contours (log density, the top 12 nats) under the draws of each method;
# crosses mark the mixtures' component means, colours the NUTS chains.

# %%
grid = np.linspace(-3.2, 3.2, 321)
gx, gy = np.meshgrid(grid, grid)
lp = np.asarray(log_posterior(jnp.stack([gx, gy], -1)))
levels = lp.max() - np.array([12.0, 8.0, 4.0, 2.0, 1.0, 0.25])      # increasing

fig, axes = plt.subplots(1, 4, figsize=(16, 4.8), sharex=True, sharey=True)
for ax, (name, x) in zip(axes, samples.items()):
    ax.contour(gx, gy, lp, levels=levels, colors="grey", linewidths=0.6,
               linestyles="solid")
    if name.startswith("NUTS"):
        for c, chain in enumerate(nuts_x):
            ax.scatter(chain[:, 0], chain[:, 1], s=2, alpha=0.3, label=f"chain {c}")
        ax.legend(loc="center", fontsize=7, markerscale=4)
    else:
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.3, color="C0")
    if "mixture" in name:
        means = np.asarray(mixture_results[name[:3].strip().lower()].state.means)
        ax.scatter(means[:, 0], means[:, 1], marker="x", color="C3", s=30, label="component means")
        ax.legend(loc="center", fontsize=7)
    masses = mode_masses(x)
    for mode, mass in zip(MODES, masses):
        ax.annotate(f"{mass:.2f}", mode, xytext=(0, 14), textcoords="offset points", ha="center",
                    fontsize=8)
    ax.set_title(name)
    ax.set_xlabel("x[0]")
    ax.set_aspect("equal")
axes[0].set_ylabel("x[1]")
fig.suptitle("Four-mode posterior: draws of each method, with the mass near each mode "
             "(exact: 0.25 each)")
fig.tight_layout()

try:
    plot_dir = Path(__file__).resolve().parent
except NameError:  # in a notebook
    plot_dir = Path.cwd()
# GFLOW_FIGURES_DIR: where to write the figure instead (the tests use a temporary folder)
plot_path = Path(os.environ.get("GFLOW_FIGURES_DIR") or plot_dir) / "multimodal_mixture_vi.png"
fig.savefig(plot_path, dpi=120)
print(f"saved {plot_path}")
