"""IsoGaussianMixtureVI on real data: Bayesian logistic regression, breast-cancer data.

The issue's acceptance criterion: "On Bayesian logistic regression (real data shipped in the
repo): posterior means within 0.1 NUTS-sd, and the ELBO at least that of AutoNormal trained for
the same number of gradient evaluations."

Model and data: ``numpyro_gflow.datasets.load_breast_cancer()``, all 569 rows, the 30 features
standardised (population sd), b ~ N(0, 5), w ~ N(0, 1)^30 (d = 31), as in examples/quickstart.py
and benchmarks/models.py (the model: a copy in tests/support.py).

NUTS reference: the means and sds in ``tests/data/logistic_nuts_moments.npz``, computed by
``tests/data/make_reference_moments.py`` from the benchmark suite's cached draws
``benchmarks/references/logistic.npz`` (4 chains x 2500 draws after 1000 warmup, max R-hat
1.0005, min ESS 9048, no divergences; made by ``python -m benchmarks.references`` from exactly
this model); their ``__info__`` is checked below. The Monte Carlo error of its means
is about sd / sqrt(9000) = 0.011 NUTS sd. (An independent 1-chain NUTS run, 1000 warmup + 2000
draws, seed 5, agreed with it within 0.049 NUTS sd on every mean, sds within 4-7 %.) Where the
file is missing, the fixture runs that 1-chain NUTS itself (~2-5 s).

Gradient evaluations of IsoGaussianMixtureVI: ``num_steps * N * B`` (the flow) +
``map_steps * N`` (the Adam climb from each initial mean) + the curvature probes at
initialisation (per component d + 31 Hessian-vector products, counted as 2 gradients each). The
AutoNormal baseline (Trace_ELBO with 1 particle, Adam) gets that many SVI steps.

What was measured (this repo's 2-core CPU, float32, JAX 0.12, NumPyro 0.22; seed 0 unless
noted; ELBO = mean of log p - log q over 10000 draws of q, standard error ~0.07 nats; rows
marked * over 50000 draws, standard error ~0.03):

=============================================  ===========  ========================  =========
engine / settings                               ELBO         max |mean - NUTS| / sd    grad evals
=============================================  ===========  ========================  =========
IsoMix N=1,   B=10,  2000 steps                 -71.58       0.37                      ~20k
IsoMix N=5,   B=10,  2000 steps                 -70.61       0.29                      101k
IsoMix N=5,   B=100, 2000 steps (IBW / MD)      -70.26/-70.25 0.26                     1.0M
IsoMix N=10 (defaults), 2000 steps              -70.04       0.27                      203k
IsoMix N=10 (defaults), 1000 steps *            -70.03                                 103k
IsoMix N=20,  B=10,  2000 steps                 -69.54       0.26                      406k
IsoMix N=50,  B=10,  500 steps  (seeds 0, 1)    -68.86/-68.83 0.24/0.24                266k
IsoMix N=50,  B=10,  500 steps  * (seeds 0, 2)  -68.95/-68.94 0.24/0.23                266k
IsoMix N=50,  B=10,  2000 steps                 -68.84       0.25                      1.0M
IsoMix N=100, B=10,  1000 steps                 -68.40       0.25                      1.0M
IsoMix N=100, B=10,  500 steps  *               -68.49       0.23                      532k
IsoMix N=100, B=5,   500 steps  * (seeds 0, 1)  -68.63/-68.56 0.24/0.23                282k
AutoNormal, 266k steps, lr 1e-2/3e-3/1e-3/3e-4  -69.32/-69.19/-69.06/-69.01  0.27/0.25/0.22/0.21
AutoNormal, 266k steps, lr 3e-4 *               -69.01       (converged: the same at 103k steps)
AutoNormal, 103k steps, lr 1e-3/3e-3            -69.05/-69.09  0.22/0.23
AutoMultivariateNormal, 20k steps, lr 3e-3      -57.54       0.08
=============================================  ===========  ========================  =========

So:

* ELBO. An isotropic family is a poor match for this posterior: the Laplace Hessian at the mode
  has eigenvalues 1.0 to 85.6, so the best single isotropic Gaussian is ~2.8 nats worse than the
  best diagonal one (Laplace KLs 15.9 vs 13.1). The mixture closes that gap by spreading its
  components (means up to 1.6 from their centroid at N = 100): it needs about N = 50 components just
  to match AutoNormal's ELBO (N = 50: +0.06 nats, within noise) and N = 100 to beat it clearly.
  With the defaults (N = 10) it is ~1 nat short; that shortfall is recorded as a strict xfail
  below (marked slow). The main test uses N = 100, B = 10 (the default), 500 steps (ELBO
  converged: 1000 steps give -68.40 +- 0.07), where it beats the best AutoNormal of the
  learning-rate grid by ~0.5 nats, ~12 standard errors of the difference (50000 draws each).
* Means. The 0.1-NUTS-sd criterion is NOT met with any setting tried: the worst parameter
  (w[16]) stays 0.23-0.26 sd off for N = 5...100 once converged (0.37 for N = 1; the median
  over the 31 parameters is 0.07). This is the mode-seeking bias of axis-aligned / isotropic
  reverse-KL fits on a correlated, slightly skewed posterior: AutoNormal is off by 0.21-0.27 sd
  at the same parameters, while a full-covariance Gaussian (AutoMultivariateNormal) meets 0.1
  (0.08). The literal criterion is kept below as a strict xfail; the passing test guards the
  measured behaviour (worst parameter < 0.3 sd, median < 0.1 sd).

Why 0.1 sd is not met, and what does meet it (measured with isomix.step on this posterior,
N = 10, B = 10 unless noted; errors of the component-mean centroid, iterate-averaged over the
second half of 3000 steps to separate the fixed point from Monte Carlo jitter):

* Not convergence: the error is 0.19 after 250 steps and settles at 0.25-0.29 from step 750 on
  (auto step h = 0.0056); tripling h gives 0.24-0.35 and a worse ELBO (-0.6 nats).
* Not Monte Carlo noise: B = 100 gives 0.254 averaged (B = 10: 0.260).
* Not initialisation: the MAP itself is 0.33 sd off (skewed posterior); the flow moves the
  means away from it to its own fixed point.
* Not the step's anisotropy: a diagonal (Laplace-diagonal) rescaling gives 0.26 as well.
* It is the family: isotropic (or axis-aligned) components in these coordinates. Running the
  paper's algorithm unchanged in whitened coordinates z = A u, A = H^{-1/2} from the Laplace
  Hessian at the MAP (``preconditioner="laplace"``; components N(m_i, eps_i A A^T) in z, so no
  longer isotropic in z: a documented extension, not the paper's family) gives an averaged
  worst error 0.10-0.11 (N = 1, 10), 0.095 (N = 50), median 0.016; whitening by the fitted
  mixture's own covariance (a second run) 0.08-0.09 (N = 20-50); by the NUTS covariance
  (oracle) 0.05. The final iterate jitters by +-0.04 around these with the auto step (h = 0.5
  in u), so single runs land at 0.05-0.16 depending on the seed (seeds 0, 1, 2: 0.049, 0.157,
  0.060).
* What meets it: ``preconditioner="adaptive"`` (A re-estimated from q's own covariance after
  20 % and 40 % of the run) with ``average_last=0.5`` (Polyak-Ruppert average of the second
  half) and N = 50 components, 1000 steps: worst 0.083 / 0.085 / 0.078 / 0.088 / 0.074 for
  seeds 0-4 (always w[16]), median 0.015, ELBO -56.99 (AutoNormal at the same ~521k gradients
  -69.0). Measured on the way (3 seeds each, worst parameter): N = 10 with Laplace A fixed +
  averaging 0.087-0.124; N = 10 adaptive, no averaging 0.052-0.147, with averaging
  0.083-0.125 (h = 0.1, 2000 steps: 0.081-0.109; B = 50: 0.091-0.101); N = 1 adaptive
  0.14; N = 50, 500 steps 0.076-0.091 (5 seeds); N = 40, 600 steps 0.081-0.096; N = 100
  0.073-0.080. So the criterion is met with margin ~0.01-0.025 (the reference's own Monte
  Carlo error is ~0.011): by enough components in well-conditioned coordinates, with the jitter
  averaged out. The unpreconditioned (paper's) family stays a strict xfail.

Runtime (2 shared cores, compilation included), measured with the machine loaded (load average
~7): the default tests 52 s (27 s CPU time; about 30 s on an idle machine): the mixture run
~12-32 s, AutoNormal's 532k SVI steps ~11-20 s; the slow xfail on the defaults 31 s more (19 s
CPU).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

import numpyro_gflow as gf
from numpyro_gflow.datasets import load_breast_cancer

# the benchmark suite's model (a copy): the cached NUTS reference is of this model
from support import logistic_regression as logistic_model

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "logistic_nuts_moments.npz"

NUM_COMPONENTS, NUM_MC, NUM_STEPS = 100, 10, 500   # main setting (see the table above)
ADAPTIVE_COMPONENTS = 50                          # the setting that meets the 0.1-sd criterion
DEFAULT_STEPS = 1000                              # the defaults' run (N = 10, B = 10)
AUTONORMAL_LR = 3e-4        # best of the grid 1e-2, 3e-3, 1e-3, 3e-4 at 266k steps (table above)
ELBO_DRAWS = 50_000         # per ELBO estimate: standard error ~0.03 nats
Z = 3.0                     # tolerance, in standard errors of an ELBO difference





def flat(samples):
    """(draws, 31): intercept, then the 30 weights."""
    return np.column_stack([np.asarray(samples["b"]), np.asarray(samples["w"])])


@pytest.fixture(scope="module")
def data():
    X, y = load_breast_cancer()          # standardised (population sd)
    return jnp.asarray(X, jnp.float32), jnp.asarray(y)


@pytest.fixture(scope="module")
def nuts_reference(data):
    """(mean, sd) of the 31 parameters under NUTS (cached: tests/data/make_reference_moments.py,
    from the benchmark suite's long reference run)."""
    assert REFERENCE.exists(), "run .venv/bin/python tests/data/make_reference_moments.py"
    ref = np.load(REFERENCE)
    info = json.loads(str(ref["__info__"]))
    # the cached run is of exactly this model and data
    assert info["model"] == "logistic" and info["method"] == "nuts", info
    assert "569 x 30, standardised" in info["description"], info["description"]
    assert "b ~ N(0, 5), w ~ N(0, 1)^30" in info["description"], info["description"]
    assert info["max_r_hat"] < 1.01 and info["divergences"] == 0, info
    # the moments are of all the cached draws, 31 parameters each
    assert ref["mean"].shape == ref["sd"].shape == (31,)
    assert int(ref["num_draws"]) == info["num_chains"] * info["num_samples_per_chain"]
    return ref["mean"], ref["sd"]


def isomix_grad_evals(engine, num_steps, d):
    # numerics.curvature: d basis HVPs (d <= 200), 30 power steps + 1
    curvature_hvps = d + 30 + 1
    n = engine.num_components
    laplace_hvps = d if isinstance(engine.preconditioner, str) else 0   # the dense Hessian
    return (num_steps * n * engine.num_mc_samples + engine.map_steps * n
            + 2 * curvature_hvps * n + 2 * laplace_hvps)


def fit(engine, num_steps, data):
    """The mixture fit and, for the same number of gradient evaluations, AutoNormal; both ELBOs."""
    X, y = data
    t0 = time.perf_counter()
    res = engine.run(jax.random.key(0), num_steps, X, y, progress_bar=False)
    ours, ours_se = (float(v) for v in res.elbo(jax.random.key(3), ELBO_DRAWS))
    t_ours = time.perf_counter() - t0

    budget = isomix_grad_evals(engine, num_steps, X.shape[1] + 1)
    t0 = time.perf_counter()
    guide = AutoNormal(logistic_model)
    svi = SVI(logistic_model, guide, optax.adam(AUTONORMAL_LR), Trace_ELBO(num_particles=1))
    params = svi.run(jax.random.key(0), budget, X, y, progress_bar=False).params
    # -loss per draw, to get a standard error as well as the estimate
    elbo_fn = jax.vmap(lambda k: -Trace_ELBO().loss(k, params, logistic_model, guide, X, y))
    per_draw = np.asarray(elbo_fn(jax.random.split(jax.random.key(4), ELBO_DRAWS)))
    auto, auto_se = float(per_draw.mean()), float(per_draw.std() / np.sqrt(ELBO_DRAWS))
    t_auto = time.perf_counter() - t0
    print(f"{engine.num_components} components, B={engine.num_mc_samples}, {num_steps} steps: "
          f"ELBO {ours:.3f} +- {ours_se:.3f} ({t_ours:.1f} s); AutoNormal, {budget} steps "
          f"(lr {AUTONORMAL_LR:g}): {auto:.3f} +- {auto_se:.3f} ({t_auto:.1f} s)")
    return res, (ours, ours_se), (auto, auto_se)


@pytest.fixture(scope="module")
def main_fit(data):
    engine = gf.IsoGaussianMixtureVI(logistic_model, num_components=NUM_COMPONENTS,
                                     preconditioner=None,
                                     num_mc_samples=NUM_MC)
    return fit(engine, NUM_STEPS, data)


def mean_errors(res, nuts_reference):
    """|mixture mean - NUTS mean| / NUTS sd per parameter. The mixture's mean is exact: the
    average of its component means (all sites are unconstrained reals here); the fitted means
    are ``params`` (the iterate average where ``average_last`` is set)."""
    mu, sd = nuts_reference
    return np.abs(np.asarray(res.params["isomix_means"]).mean(0) - mu) / sd


@pytest.mark.slow   # ~35 s with its AutoNormal run; the default run keeps the adaptive fit's checks
def test_isomix_elbo_at_least_autonormal_same_gradient_budget(main_fit):
    # measured: IsoMix -68.49 +- 0.03, AutoNormal (532400 steps, lr 3e-4) -69.01 +- 0.03
    res, (ours, ours_se), (auto, auto_se) = main_fit
    se = float(np.hypot(ours_se, auto_se))
    assert ours - auto >= -Z * se, (ours, auto, se)
    # the flow itself got there: its running ELBO rose from the Laplace-style start
    trace = res.trace["elbo"]
    assert trace.shape == (NUM_STEPS,)
    assert trace[-50:].mean() > trace[:50].mean() + 2.0, (trace[:50].mean(), trace[-50:].mean())


@pytest.mark.slow   # shares the main fit (above)
def test_isomix_means_close_to_nuts_measured_bias(main_fit, nuts_reference):
    # NOT the criterion (see the strict xfail below): a guard on the measured behaviour.
    # measured: worst parameter 0.23 NUTS sd (w[16]), median 0.07; AutoNormal 0.21-0.27 worst
    err = mean_errors(main_fit[0], nuts_reference)
    print(f"|mean - NUTS mean| / NUTS sd: max {err.max():.3f} (param {int(err.argmax())}), "
          f"median {np.median(err):.3f}")
    assert err.max() < 0.3, err
    assert np.median(err) < 0.1, err


@pytest.mark.slow   # shares the main fit (above)
@pytest.mark.xfail(strict=True, reason="measured: worst parameter 0.23-0.26 NUTS sd off for "
                   "N = 5..100 components (AutoNormal: 0.21-0.27); reverse-KL bias of isotropic "
                   "components on this correlated posterior; the fixed point, not slow "
                   "convergence or MC noise (see the module docstring)")
def test_isomix_means_within_0_1_nuts_sd(main_fit, nuts_reference):
    # the criterion, literally
    err = mean_errors(main_fit[0], nuts_reference)
    assert np.all(err < 0.1), err


# (the same run with preconditioner="laplace": ELBO -57.03 +- 0.01 against AutoNormal's
# -69.01 +- 0.03, measured 2026-12-02; it is not the default: on eight schools its auto step
# diverges at step 4, see docs/engines/isomix.md)
@pytest.mark.slow   # ~30-40 s more; documents a known shortfall, so kept out of the default run
@pytest.mark.xfail(strict=True, reason="measured: with the defaults (N = 10, B = 10) the ELBO is "
                   "~-70.0, about 1 nat below AutoNormal's ~-69.0 at the same budget; ~50-100 "
                   "components are needed on this 31-d posterior (eigenvalues 1-86)")
def test_isomix_defaults_elbo_at_least_autonormal(data):
    engine = gf.IsoGaussianMixtureVI(logistic_model)
    _, (ours, ours_se), (auto, auto_se) = fit(engine, DEFAULT_STEPS, data)
    assert ours - auto >= -Z * float(np.hypot(ours_se, auto_se)), (ours, auto)


@pytest.fixture(scope="module")
def adaptive_fit(data):
    # no AutoNormal run of its own (521k SVI steps, ~15 s): the ELBO comparison at equal budget
    # is test_isomix_elbo_at_least_autonormal_same_gradient_budget's; here a fixed bar
    engine = gf.IsoGaussianMixtureVI(logistic_model, num_components=ADAPTIVE_COMPONENTS,
                                     preconditioner="adaptive", average_last=0.5)
    res = engine.run(jax.random.key(0), DEFAULT_STEPS, *data, progress_bar=False)
    return res, tuple(float(v) for v in res.elbo(jax.random.key(3), ELBO_DRAWS))


def test_adaptive_preconditioned_means_within_0_1_nuts_sd(adaptive_fit, nuts_reference):
    # The criterion, met with preconditioner="adaptive", average_last=0.5, N = 50, B = 10,
    # 1000 steps (~521k gradients). measured: worst 0.083 (seed 0; seeds 1-4: 0.085, 0.078,
    # 0.088, 0.074), always w[16] (index 17), median 0.015; the NUTS reference's own Monte Carlo
    # error is ~0.011. Without averaging, or with the Laplace A kept fixed, or N = 10: 0.08-0.15.
    err = mean_errors(adaptive_fit[0], nuts_reference)
    print(f"adaptive: |mean - NUTS mean| / NUTS sd: max {err.max():.3f} (param "
          f"{int(err.argmax())}), median {np.median(err):.3f}")
    assert np.all(err < 0.1), err
    assert np.median(err) < 0.03, err


def test_adaptive_preconditioned_elbo_beats_autonormal(adaptive_fit):
    # measured -56.99 +- 0.03; AutoNormal at this budget (~521k steps) -69.0 (the table above;
    # converged by 103k steps), AutoMVN at 20k steps -57.5
    res, (ours, ours_se) = adaptive_fit
    assert ours > -57.5, ours
    assert ours - (-69.0) >= 10.0, ours
