"""MixFlow: the flow map, its inverse and log-Jacobian, the three operations, and the engine."""

import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, Predictive

import numpyro_gflow as gf
from numpyro_gflow.core import mixflow as mf
from numpyro_gflow.core import numerics
import background


def banana():
    # the authors' banana (b = 0.1): x1 ~ N(0, 10^2), x2 | x1 ~ N(0.1 x1^2 - 10, 1); normalised
    x1 = numpyro.sample("x1", dist.Normal(0.0, 10.0))
    numpyro.sample("x2", dist.Normal(0.1 * x1**2 - 10.0, 1.0))


def _banana_vg(x):
    return jax.value_and_grad(
        lambda z: (dist.Normal(0, 10).log_prob(z[0])
                   + dist.Normal(0.1 * z[0] ** 2 - 10, 1).log_prob(z[1])))(x)


PARAMS = mf.MixFlowParams(jnp.array([0.0, -9.0]), jnp.array([3.0, 1.5]), jnp.array([0.1, 0.05]))
# full-rank reference, the leapfrog in its whitened coordinates (x = loc + L y)
_L = jnp.array([[3.0, 0.0], [-2.0, 1.5]])
PARAMS_FULL = mf.MixFlowParams(PARAMS.loc, jnp.diagonal(_L), jnp.array([0.03, 0.03]), _L, _L)


@pytest.fixture(scope="module")
def banana_fit():
    # the paper's step-size criterion (best ELBO over the grid)
    return gf.MixFlow(banana, reference="meanfield", flow_length=50, num_leapfrog=10,
                      step_size_rule="elbo").run(jax.random.key(0), 3000, progress_bar=False)


def test_laplace_cdf_and_inverse():
    r = jnp.linspace(-8, 8, 101)
    np.testing.assert_allclose(mf.laplace_icdf(mf.laplace_cdf(r)), r, atol=2e-4)
    # F is the Laplace CDF: F(0) = 1/2, F(1) = 1 - e^-1 / 2
    np.testing.assert_allclose(mf.laplace_cdf(jnp.array([0.0, 1.0])), [0.5, 1 - 0.5 * np.exp(-1)],
                               rtol=1e-6)


@pytest.mark.parametrize("params", [PARAMS, PARAMS_FULL], ids=["meanfield", "fullrank"])
def test_flow_map_inverse_and_log_jacobian(params):
    PARAMS = params
    p = mf.sample_reference(jax.random.key(1), PARAMS, _banana_vg)
    q, log_jac = mf.flow_map(p, PARAMS, _banana_vg, 5)
    back, log_jac_back = mf.inverse_flow_map(q, PARAMS, _banana_vg, 5)
    for a, b in [(back.x, p.x), (back.rho, p.rho), (back.u, p.u)]:
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(log_jac_back, log_jac, rtol=1e-4, atol=1e-5)

    # log |det dT/d(x, rho)| by autodiff (T's u-part is a shift, so the determinant is this block)
    def t_xr(v):
        out, _ = mf.flow_map(mf.point(v[:2], v[2:], p.u, _banana_vg), PARAMS, _banana_vg, 5)
        return jnp.concatenate([out.x, out.rho])

    jac = jax.jacfwd(t_xr)(jnp.concatenate([p.x, p.rho]))
    np.testing.assert_allclose(jnp.linalg.slogdet(jac)[1], log_jac, atol=1e-3)
    assert abs(float(log_jac)) > 1e-2  # the check is not vacuous: the refresh changes volume


def test_whitened_leapfrog_is_the_leapfrog_of_the_whitened_target():
    # with step_matrix L the leapfrog in x must equal the plain leapfrog of y -> log pi(loc + L y)
    # (a wrong force transform would still be volume-preserving and invertible)
    loc, L = PARAMS_FULL.loc, PARAMS_FULL.step_matrix

    def vg_y(y):
        value, grad = _banana_vg(loc + L @ y)
        return value, grad @ L

    p = mf.sample_reference(jax.random.key(3), PARAMS_FULL, _banana_vg)
    y = jnp.linalg.solve(L, p.x - loc)
    q = mf._leapfrogs(p, PARAMS_FULL, _banana_vg, 7, 1.0)
    q_y = mf._leapfrogs(mf.point(y, p.rho, p.u, vg_y), PARAMS_FULL._replace(step_matrix=None,
                                                                             scale_tril=None),
                        vg_y, 7, 1.0)
    np.testing.assert_allclose(q.x, loc + L @ q_y.x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(q.rho, q_y.rho, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(q.x - p.x))) > 0.1  # it moved


def test_laplace_finds_mode_and_covariance_of_a_gaussian():
    # Adam stalls short of the mode of an ill-conditioned target; the Newton finish lands on it
    corr = jnp.array([[1.0, 0.95, 0.3], [0.95, 1.0, 0.4], [0.3, 0.4, 1.0]])
    sd = jnp.array([1.0, 3.0, 0.1])
    cov = corr * sd[:, None] * sd
    mean = jnp.array([1.0, -2.0, 0.5])
    log_p = dist.MultivariateNormal(mean, cov).log_prob
    center, whiten = numerics.laplace(log_p, jnp.array([4.0, 4.0, -4.0]), map_steps=50)
    np.testing.assert_allclose(center, mean, atol=2e-3)
    np.testing.assert_allclose(whiten @ whiten.T, cov, rtol=2e-3, atol=2e-4)
    far, _ = numerics.laplace(log_p, jnp.array([4.0, 4.0, -4.0]), map_steps=50, newton_steps=0)
    assert float(jnp.max(jnp.abs(far - mean))) > 0.05  # without Newton: not there


# ~17 s; slow since 2026-12-06 (the default suite neared 12 min): the full-rank reference,
# MixFlow's default, is held to NUTS accuracy on kidiq (correlations -0.99) in the default run
# (test_posteriordb_defaults.py)
@pytest.mark.slow
def test_fullrank_reference_on_a_correlated_gaussian():
    # normalised target, log Z = 0. The best mean-field Gaussian has KL = -1/2 log det(corr)
    # = 1.06 here (a mean-field fit's reference ELBO was below -0.9); the full-rank reference
    # (Laplace, then VI in its whitened coordinates) is exact up to Monte Carlo noise, and the
    # flow keeps it so
    sd = jnp.array([1.0, 2.0, 0.5])
    cov = jnp.array([[1.0, 0.9, 0.5], [0.9, 1.0, 0.6], [0.5, 0.6, 1.0]]) * sd[:, None] * sd

    def model():
        numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(3), covariance_matrix=cov))

    res = gf.MixFlow(model, flow_length=20, num_leapfrog=10, step_size=0.05, reference="fullrank",
                     num_draws=2000).run(jax.random.key(0), 300, progress_bar=False)
    p, s = res.flow.params, res.stats
    # measured max error 0.092 (keys 0-3: 0.024-0.148, 21-34 % of the allowed): the VI
    # refinement's stochastic-gradient noise; a reference without the correlation misses S_12 = 1.8
    np.testing.assert_allclose(p.scale_tril @ p.scale_tril.T, cov, rtol=0.1, atol=0.03)
    assert p.step_matrix is p.scale_tril or np.allclose(p.step_matrix, p.scale_tril)
    np.testing.assert_allclose(p.step_size, [0.05] * 3)
    # measured reference -0.0007 +- 0.0018, flow 0.0030 +- 0.0040 (keys 0-3: -0.0044..0.0008,
    # -0.0074..0.0030); the bounds are >= 4 of these SEs from 0, the mean-field optimum is -1.06
    assert -0.03 < s["reference_elbo"] < 0.02 and -0.05 < s["elbo"] < 0.02, s
    # the fit's own ELBO trace counts the whitening's log-determinant (log Z = 0 here)
    # measured 0.015 (keys 0-3: -0.007..0.015); dropping the log-determinant shifts it by
    # 1/2 log det(cov) = -1.06
    assert abs(float(np.mean(res.trace["elbo"]))) < 0.05, float(np.mean(res.trace["elbo"]))
    draws = res.get_samples()["x"]
    # measured max error 0.27 on the var-4 entry (42 % of its allowed 0.65; keys 1-3: 12-17 %);
    # 2000 draws: its MC sd is 4 sqrt(2/2000) = 0.13, so ~5 SE; uncorrelated draws miss S_12 = 1.8
    np.testing.assert_allclose(np.cov(np.asarray(draws).T), cov, rtol=0.15, atol=0.05)
    # a given Cholesky factor is a full-rank start, kept with zero steps
    given = gf.MixFlow(model, flow_length=5, num_leapfrog=2, step_size=0.05,
                       reference=(jnp.ones(3), jnp.linalg.cholesky(cov))).run(
        jax.random.key(0), 0, progress_bar=False)
    np.testing.assert_allclose(given.flow.params.scale_tril, jnp.linalg.cholesky(cov), rtol=1e-5)
    np.testing.assert_allclose(given.flow.params.loc, jnp.ones(3))
    with pytest.raises(ValueError, match="lower-triangular"):
        gf.MixFlow(model, reference=(jnp.ones(3), jnp.linalg.cholesky(cov).T)).run(
            jax.random.key(0), 0, progress_bar=False)


# issue criterion: forward then inverse within 1e-8 (float64), N = 100 maps, a 10-d target.
# The dynamics is chaotic, so round-off grows with the step: max over 16 draws was 1e-12,
# 1e-11, 5e-11, 2e-6, 2e-8 at steps 0.02, 0.035, 0.05, 0.07, 0.1 (the ELBO rule picks
# 0.057 here, the acceptance rule 0.1). x64 is global in JAX, so in a subprocess (a job of
# tests/background.py: started early, it runs while the in-process tests do)
FLOAT64_CODE = textwrap.dedent("""
    import numpyro; numpyro.enable_x64()
    import jax, jax.numpy as jnp, numpy as np, numpyro.distributions as dist
    import numpyro_gflow as gf
    A = np.random.default_rng(0).normal(size=(10, 10))
    cov = jnp.asarray(A @ A.T / 10 + 0.1 * np.eye(10))
    def model():
        numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(10), covariance_matrix=cov))
    res = gf.MixFlow(model, flow_length=100, num_leapfrog=20, num_draws=16,
                     step_size=0.035).run(jax.random.key(0), 1000, progress_bar=False)
    assert res.flow.params.loc.dtype == jnp.float64
    err = res.flow.inversion_error(jax.random.key(1), 100, 16)
    print("MAXERR", float(err.max()))
""")
FLOAT64_JOB = background.job("mixflow: float64 inversion", [sys.executable, "-c", FLOAT64_CODE],
                             timeout=600)


@pytest.mark.slow   # 21 s of a child process; the float32 inversion tests stay in the default run
@pytest.mark.background(FLOAT64_JOB)
def test_float64_inversion_on_10d_target(tmp_path):
    out = background.result(FLOAT64_JOB, tmp_path).proc
    assert out.returncode == 0, out.stderr[-2000:]
    err = float(out.stdout.split("MAXERR")[1])
    assert err < 1e-8, err


def test_elbo_agrees_with_density_and_sampler(banana_fit):
    # the trajectory ELBO estimator against the two other operations: E_{z ~ q_N}[log pibar(z) -
    # log q_N(z)] with z from the sampler and log q_N from the backward pass
    flow = banana_fit.flow
    z = flow.sample(jax.random.key(5), 2000)
    direct = mf.log_target(z) - flow.log_density(z.x, z.rho, z.u)
    traj, traj_se = flow.elbo(jax.random.key(6), 500)
    se = np.hypot(float(jnp.std(direct)) / np.sqrt(2000), float(traj_se))
    assert abs(float(jnp.mean(direct)) - float(traj)) < 4 * se, (float(jnp.mean(direct)),
                                                                 float(traj), se)


def test_density_integrates_to_one_and_matches_samples(banana_fit):
    flow = banana_fit.flow
    draws = np.asarray(flow.sample(jax.random.key(2), 20000).x)
    lo, hi = np.quantile(draws, 0.0005, 0), np.quantile(draws, 0.9995, 0)
    pad = 0.25 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    n = 48  # quadrature cells per axis; the histogram uses 16 x 16 blocks of 3 x 3 cells
    edges = [np.linspace(lo[i], hi[i], n + 1) for i in range(2)]
    mids = [0.5 * (e[1:] + e[:-1]) for e in edges]
    grid = np.stack(np.meshgrid(*mids, indexing="ij"), -1).reshape(-1, 2)
    log_q = flow.marginal_log_density(jnp.asarray(grid, jnp.float32), jax.random.key(3), num_aux=64)
    cell = (edges[0][1] - edges[0][0]) * (edges[1][1] - edges[1][0])
    mass = np.exp(np.asarray(log_q)).reshape(n, n) * cell
    # measured 1.023 here; 0.974-1.052 over fit keys 0-2 x three draw/aux keys (2026-12-07,
    # with the grid from the draws or a fixed one): the 64-draw auxiliary average inside
    # log q is heavy-tailed (one flow, one grid, three aux keys: 0.987 / 1.052 / 0.998), so
    # 0.02 (measured on six pairs before) was luck. A log q off by 0.06 nats everywhere fails;
    # a missing log-Jacobian or 1/N is off by far more
    assert abs(mass.sum() - 1.0) < 0.06, mass.sum()
    blocks = mass.reshape(16, 3, 16, 3).sum((1, 3))
    hist, *_ = np.histogram2d(draws[:, 0], draws[:, 1], bins=[e[::3] for e in edges])
    tv = 0.5 * np.abs(hist / len(draws) - blocks / blocks.sum()).sum()
    # 20,000 draws alone give TV ~ 0.02-0.03 on these bins; a density off by a factor on part
    # of the support gives far more
    assert tv < 0.06, tv


def test_mixflow_improves_on_its_reference(banana_fit):
    s = banana_fit.stats
    assert s["elbo"] > s["reference_elbo"] + 4 * np.hypot(s["elbo_se"], s["reference_elbo_se"]), s
    # banana's log Z = 0: the ELBO is a lower bound. Measured -0.867 +- 0.036 (keys 0-2: -0.87 to
    # -1.01, reference -1.25 to -1.83), 25 SE below 0.05; fails an estimate above log Z by 1.4 SE
    assert s["elbo"] < 0.05


def test_engine_outputs(banana_fit):
    res = banana_fit
    assert set(res.get_samples()) == {"x1", "x2"}
    fresh = res.get_samples(50, jax.random.key(9))
    assert fresh["x1"].shape == (50,)
    pred = Predictive(banana, guide=res.guide, params=res.params, num_samples=30,
                      return_sites=["x1", "x2"])(jax.random.key(1))
    assert pred["x1"].shape == (30,) and bool(jnp.all(jnp.isfinite(pred["x2"])))
    dt = res.to_arviz()
    assert "elbo" in dt["trace"].data_vars
    # the fit's end-of-run numbers travel with the trace (the issue: inversion error reported)
    attrs = dt["trace"].attrs
    assert (attrs["inversion_error"] == res.stats["inversion_error"]
            and attrs["elbo"] == res.stats["elbo"])
    again = gf.MixFlow(banana, reference="meanfield", flow_length=50, num_leapfrog=10,
                       step_size_rule="elbo").run(jax.random.key(0), 3000, progress_bar=False,
                                                  diagnose=False)
    # its points are drawn when first read (run + get_samples(n, key) does not pay for them),
    # the same points as a run whose checks read them at once
    assert callable(again._unconstrained)
    np.testing.assert_array_equal(np.asarray(again.unconstrained), np.asarray(res.unconstrained))
    assert not callable(again._unconstrained)


def test_acceptance_rule_gives_posterior_draws():
    # the default step rule: draws close to exact ones on the banana (energy distance, scaled by
    # the exact sd); the reference alone is far off, so a flow that does not move fails
    from numpyro_gflow.diagnostics import energy_distance

    res = gf.MixFlow(banana, reference="meanfield", flow_length=200, num_leapfrog=50,
                     num_draws=1000).run(jax.random.key(0), 3000, progress_bar=False)
    rng = np.random.default_rng(0)
    x1 = rng.normal(0, 10, 1000)
    exact = np.stack([x1, rng.normal(0.1 * x1**2 - 10, 1)], 1)
    draws = np.stack([res.get_samples()["x1"], res.get_samples()["x2"]], 1)
    ed = energy_distance(draws, exact, scale_by="y")
    ref = res.flow.params
    ref_draws = np.asarray(ref.loc + ref.scale * jax.random.normal(jax.random.key(1), (1000, 2)))
    # measured ED 0.0108 (fit keys 0-2: 0.005-0.011); exact vs exact, 1000 draws each (rng seeds
    # 1-5 against this one): 0.0014-0.0059; the reference alone 0.40 (keys 0-2: 0.40-0.51)
    assert ed < 0.02 < energy_distance(ref_draws, exact, scale_by="y"), ed
    chosen = res.stats["step_size"]
    assert res.stats["step_size_grid"][chosen][0] >= 0.9


def test_banana_elbo_ordering_mixflow_planar_meanfield():
    # The issue's ordering on the authors' banana, in their settings (L = 50, step 0.016 in every
    # coordinate: step_scale="unit"). measured (3 keys x 2000 draws): N = 1000 -0.363 / -0.360 /
    # -0.366 (+- 0.011), N = 2000 -0.34 / -0.347 / -0.351; mean-field reference -1.242; a
    # 10-layer planar flow -0.407 +- 0.004 (benchmarks/experiments/mixflow_targets/
    # MIXFLOW_TARGETS.md; not retrained here).
    # With the default step_scale="reference" the best was -0.456 (N = 2000, step 0.008).
    res = gf.MixFlow(banana, reference="meanfield", flow_length=1000, num_leapfrog=50,
                     step_size=0.016, step_scale="unit", num_draws=10).run(jax.random.key(0), 5000,
                                                          progress_bar=False)
    np.testing.assert_allclose(res.flow.params.step_size, [0.016, 0.016])
    elbo, se = (float(v) for v in res.flow.elbo(jax.random.key(100), 1000))
    planar, reference = -0.407, float(res.stats["reference_elbo"])
    assert reference < -1.1, reference
    assert elbo > planar + 2 * se, (elbo, se)
    assert elbo < 0.05


def test_given_reference_and_zero_steps():
    res = gf.MixFlow(banana, flow_length=20, num_leapfrog=5, step_size=0.05,
                     reference=(jnp.array([0.0, -9.0]), jnp.array([3.0, 1.5]))
                     ).run(jax.random.key(0), 0, progress_bar=False)
    np.testing.assert_allclose(res.flow.params.loc, [0.0, -9.0])
    np.testing.assert_allclose(res.flow.params.step_size, [0.15, 0.075], rtol=1e-6)
    with pytest.raises(ValueError, match="reference"):
        gf.MixFlow(banana, reference=(jnp.zeros(3), 1.0)).run(jax.random.key(0), 0,
                                                              progress_bar=False)


def test_mcmc_kernel_gives_trajectories(banana_fit):
    kernel = gf.MixFlowKernel(fit=banana_fit)
    mcmc = MCMC(kernel, num_warmup=10, num_samples=40, num_chains=2, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.key(4))
    samples = mcmc.get_samples(group_by_chain=True)
    assert samples["x1"].shape == (2, 40)
    # each MCMC step is the deterministic flow map: the n-th draw is T^(10 + n) of the start
    # that init gives for the same per-chain keys (MCMC splits its key into one per chain)
    fit = banana_fit.flow.fit
    vg = fit.target.value_and_grad(fit.dynamic)
    start = kernel.init(jax.random.split(jax.random.key(4), 2), 10)
    point = mf.FlowPoint(*start[:5])
    step = jax.jit(jax.vmap(lambda q: mf.flow_map(q, fit.params, vg, fit.num_leapfrog)[0]))
    for _ in range(10 + 40):
        point = step(point)
    np.testing.assert_allclose(point.x[:, 0], samples["x1"][:, -1], rtol=1e-5, atol=1e-5)
    import arviz as az
    assert "posterior" in az.from_numpyro(mcmc).children


@pytest.mark.parametrize("kwargs, name", [
    ({"flow_length": 0}, "flow_length"), ({"num_leapfrog": 0}, "num_leapfrog"),
    ({"step_size": -1.0}, "step_size"), ({"reference": "laplace"}, "reference"),
    ({"step_size_grid": ()}, "step_size_grid"), ({"step_size_rule": "ksd"}, "step_size_rule"),
    ({"target_accept": 1.5}, "target_accept"), ({"map_steps": -1}, "map_steps"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        gf.MixFlow(banana, **kwargs)


def _diabetes():
    # the model and exact evidence of benchmarks/experiments/mixflow_realdata (copies in support)
    from support import diabetes_log_evidence as log_evidence
    from support import diabetes_regression as model

    from numpyro_gflow.datasets import load_diabetes

    X, y = (jnp.asarray(a, jnp.float32) for a in load_diabetes())
    ref = np.load(Path(__file__).resolve().parents[1] / "data" / "diabetes_nuts_moments.npz")

    def worst(samples):
        return max(float(np.max(np.abs(np.mean(samples[k], 0) - ref[k + "_mean"]) / ref[k + "_sd"]))
                   for k in ("w", "b", "sigma"))

    return model, log_evidence, X, y, worst


@pytest.mark.slow   # ~15 s; the flow beating its reference is also checked on the banana
def test_real_data_regression_meanfield_flow_moves_its_reference():
    # Reference: cached NUTS moments (4 x 10,000 draws, tests/data/make_diabetes_nuts.py; Monte
    # Carlo error ~0.007 sd per mean, ~0.02 for the worst of 12). Errors are measured on 4000
    # flow draws (MC error ~0.016 sd per mean, ~0.04 for the worst of 12; key 1 measured
    # 0.093-0.110 over four draw keys).
    model, _, X, y, worst = _diabetes()
    res = gf.MixFlow(model, flow_length=100, num_leapfrog=20, reference="meanfield").run(
        jax.random.key(1), 3000, X, y, progress_bar=False)
    # the paper's mean-field MixFlow (N = 100, L = 20): its error is mostly the fit's, not
    # Monte Carlo: over keys 1-5, 10,000 draws each, 0.03 / 0.11 / 0.14 / 0.07 / 0.07 (key 1:
    # 0.086-0.106 over draw keys); 0.13 was seen on another machine with 1000 draws. Its
    # mean-field reference alone is off by 0.39 (checked below), so the bound 0.2 still fails
    # a flow that does not move its reference.
    assert worst(res.get_samples(4000, jax.random.key(7))) < 0.2
    p = res.flow.params
    z = p.loc + p.scale * jax.random.normal(jax.random.key(2), (10_000, p.loc.shape[0]))
    assert worst(res.bridge.constrain_batch(z, (X, y), {})) > 0.25  # measured 0.39
    # the flow improves on its mean-field reference's ELBO (augmented space, a lower bound)
    s = res.stats
    # measured -506.32 +- 0.16 vs -507.26 +- 0.08: a gap of 0.94 = 5.3 combined SE (keys 2, 3:
    # gaps 1.88, 1.93); a flow that did not move its reference ties it within noise
    assert s["elbo"] > s["reference_elbo"], s


# ~40 s: slow to keep the default run short; MixFlow's defaults on a real regression against
# reference draws are in the default run (tests/engines/test_posteriordb_engines.py, kidiq)
@pytest.mark.slow
def test_real_data_regression_means_match_nuts():
    # issue criterion: a real-data regression (diabetes, 442 x 10, numpyro_gflow.datasets),
    # posterior means within 0.1 NUTS sd (reference: as in the mean-field test above).
    model, log_evidence, X, y, worst = _diabetes()

    # the ELBO criterion (>= AutoIAFNormal / AutoBNAFNormal at equal wall time; measured in
    # benchmarks/experiments/mixflow_realdata/MIXFLOW_REALDATA.md: their KL to the exact
    # evidence is 0.13-0.25 nats there):
    # with the full-rank reference and the ELBO step rule, KL < 0.1 against the exact log
    # evidence (measured 0.009 / 0.006 / 0.000 +- 0.008 for keys 1-3; its reference alone
    # 0.015-0.025); the mean-field MixFlow's was 1.4
    full = gf.MixFlow(model, flow_length=100, num_leapfrog=20, reference="fullrank",
                      step_size_rule="elbo", step_size_grid=(0.005, 0.01, 0.02, 0.04),
                      num_tune_samples=32).run(jax.random.key(1), 1000, X, y, progress_bar=False)
    log_z = log_evidence(X, y)
    assert log_z - full.stats["elbo"] < 0.1, (log_z, full.stats)
    assert full.stats["elbo"] < log_z + 4 * full.stats["elbo_se"]  # a lower bound, within noise
    # the 0.1 sd: measured 0.014-0.031 over keys 1-5 with 10,000 draws, 0.020-0.040
    # for key 1 over four draw keys of 4000 (Monte Carlo error of the worst of 12 about 0.04
    # from the draws and 0.02 from the reference)
    assert worst(full.get_samples(4000, jax.random.key(7))) < 0.1
    # the VI refinement improves on its Laplace start (measured KL 0.086-0.090 +- 0.014 for the
    # Laplace approximation alone, 0.015 after the 1000 steps)
    log_p = jax.jit(jax.vmap(lambda z: full.bridge.log_density(z, (X, y), {})))
    mode, whiten = jax.jit(lambda x: numerics.laplace(
        lambda z: full.bridge.log_density(z, (X, y), {}), x, 200))(full.flow.params.loc)
    laplace_q = dist.MultivariateNormal(mode, scale_tril=jnp.linalg.cholesky(whiten @ whiten.T))
    z = laplace_q.sample(jax.random.key(5), (4000,))
    laplace_elbo = float(jnp.mean(log_p(z) - laplace_q.log_prob(z)))
    assert full.stats["reference_elbo"] > laplace_elbo + 0.03, (laplace_elbo, full.stats)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cross", "funnel", "warped_gaussian"])
def test_paper_targets_energy_distance_within_1_5_nuts(name):
    # issue criterion on the paper's other 2-d targets (the banana is in the default run:
    # test_acceptance_rule_gives_posterior_draws): energy distance to exact draws at most 1.5x
    # that of as many NUTS draws. Measured here (N = 300, 1000 draws): ratios 0.07 (cross),
    # 0.18 (funnel), 0.05 (warped Gaussian); benchmarks/experiments/mixflow_targets/
    # MIXFLOW_TARGETS.md (N = 1000, 2000 draws): 0.03, 0.21, 0.07. Slow (20 s for the three):
    # `make test-slow`. The targets and run_target are copies of that experiment's (support).
    from support import run_target

    row = run_target(name, draws=1000, flow_length=300, reference_steps=3000)
    assert row["ed_mixflow"] <= 1.5 * row["ed_nuts"], row
