import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import MCMC, NUTS

import numpyro_gflow as gf
from numpyro_gflow.diagnostics import energy_distance
from numpyro_gflow.engines.mirror import MirroredTarget

SPARSE_ALPHA = jnp.array([90.1, 5.1, 5.1] + [0.1] * 17)


def sparse_reference(n=1000):
    """``n`` exact draws of Dirichlet(SPARSE_ALPHA), by NumPy (JAX's Dirichlet sampler takes
    ~3 s to compile)."""
    return jnp.asarray(np.random.default_rng(123).dirichlet(np.asarray(SPARSE_ALPHA, np.float64),
                                                            n), jnp.float32)


# the 95th percentile of the energy distance (raw coordinates) between 50 fresh exact draws
# and `sparse_reference()` (30 keys, NumPy's generator seeded 1000-1029; median 0.00095)
EXACT_50_Q95 = 0.0023


def sparse_dirichlet():
    numpyro.sample("p", dist.Dirichlet(SPARSE_ALPHA))


def mixed_sites(y):
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(4)))
    rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
    frac = numpyro.sample("frac", dist.Uniform(-1.0, 3.0))
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu + frac + p[0] * rate, 1.0), obs=y)


def test_dual_score_of_dirichlet_is_the_papers_formula():
    bridge = gf.ModelBridge.from_model(sparse_dirichlet)
    target = MirroredTarget(bridge)
    eta = jax.random.normal(jax.random.key(0), (19,)) * 3
    score = jax.grad(target.log_density)(eta)
    theta = target.primal(eta)["p"]
    expected = SPARSE_ALPHA[:-1] - SPARSE_ALPHA.sum() * theta[:-1]
    np.testing.assert_allclose(score, expected, rtol=1e-4, atol=1e-3)
    # and the site Jacobian is grad^2 psi^{-1} = diag(theta) - theta theta^T
    J = target.site_jacobian("p", eta)
    t = theta[:-1]
    np.testing.assert_allclose(J, jnp.diag(t) - jnp.outer(t, t), atol=1e-6)


@pytest.mark.slow   # ~18 s; the domains are also checked by test_properties' random models
def test_samples_stay_on_their_domains():
    # property check over seeds: simplex rows non-negative summing to 1, rate > 0, frac in (-1, 3)
    y = jnp.array([0.5, 1.2, -0.3])
    for eng in (gf.MSVGD(mixed_sites, num_particles=20, step_size=0.5),
                gf.CoinMSVGD(mixed_sites, num_particles=20)):
        for seed in range(2):
            s = eng.run(jax.random.key(seed), 150, y, progress_bar=False).get_samples()
            assert bool(jnp.all(s["p"] >= 0))
            np.testing.assert_allclose(s["p"].sum(-1), 1.0, atol=1e-5)
            assert bool(jnp.all(s["rate"] > 0))
            assert bool(jnp.all((s["frac"] > -1.0) & (s["frac"] < 3.0)))


QUAD_D = 6
QUAD_MU = jnp.array([0.3, 0.05, 0.2, 0.1, 0.25])
QUAD_A = jnp.eye(QUAD_D - 1) * 60.0 + 20.0


def quadratic_on_simplex():
    # a truncated-Gaussian-like target on the simplex: uniform base measure times exp(-quadratic)
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(QUAD_D)))
    r = p[:-1] - QUAD_MU
    numpyro.factor("quad", -0.5 * r @ QUAD_A @ r)


# ~35 s (an in-test NUTS run); the default run checks the mirrored engines' accuracy on the sparse
# Dirichlet
@pytest.mark.slow
def test_quadratic_simplex_target_matches_nuts():
    mcmc = MCMC(NUTS(quadratic_on_simplex), num_warmup=1000, num_samples=10000, progress_bar=False)
    mcmc.run(jax.random.key(1))
    ref = np.asarray(mcmc.get_samples()["p"])
    # the paper's algorithm (dual coordinates): measured max mean err 0.054 (MSVGD), 0.063
    for eng in (gf.MSVGD(quadratic_on_simplex, num_particles=100, optimizer=optax.rmsprop(0.05),
                         precondition=None),
                gf.CoinMSVGD(quadratic_on_simplex, num_particles=100, precondition=None)):
        p = np.asarray(eng.run(jax.random.key(0), 1500, progress_bar=False).get_samples()["p"])
        err = np.abs(p.mean(0) - ref.mean(0)) / ref.std(0)
        assert np.all(err < 0.1), (type(eng).__name__, err)
    # the defaults (Laplace-whitened dual, kernel bandwidth 2 d there): measured max mean err
    # 0.045 / 0.021 and max sd err 0.026 / 0.024 (paper's coordinates 0.054 / 0.063 and 0.18;
    # with the median heuristic in the whitened dual 0.095 / 0.078 and 0.19 / 0.17): bounds
    # 0.1 and 0.1; a run that had not moved from its start would be > 1 sd off
    for eng in (gf.MSVGD(quadratic_on_simplex, num_particles=100),
                gf.CoinMSVGD(quadratic_on_simplex, num_particles=100)):
        p = np.asarray(eng.run(jax.random.key(0), 1500, progress_bar=False).get_samples()["p"])
        err = np.abs(p.mean(0) - ref.mean(0)) / ref.std(0)
        assert np.all(err < 0.1), (type(eng).__name__, err)
        assert np.all(np.abs(p.std(0) / ref.std(0) - 1) < 0.1), type(eng).__name__


def test_sparse_dirichlet_mirrored_beat_stick_breaking_svgd():
    # the paper's target (Shi et al. 2022, sec. 5.1): 50 particles, energy distance to 1000
    # exact draws (raw coordinates). Measured at 1000 steps: see the assertions' comments.
    ref = sparse_reference()
    steps = 1000
    rms = optax.rmsprop(0.1)   # the authors' optimizer for the constrained runs
    ed = {}
    # the paper's algorithm: dual coordinates (defaults: test_greater_than_map_... and the
    # posteriordb tests)
    for name, eng in {"MSVGD": gf.MSVGD(sparse_dirichlet, num_particles=50, optimizer=rms,
                                        precondition=None),
                      "CoinMSVGD": gf.CoinMSVGD(sparse_dirichlet, num_particles=50,
                                                precondition=None),
                      "SVGD": gf.SVGD(sparse_dirichlet, num_particles=50, optimizer=rms)}.items():
        p = eng.run(jax.random.key(0), steps, progress_bar=False).get_samples()["p"]
        ed[name] = energy_distance(p, ref, scale_by=None)
    # measured MSVGD 0.00079, CoinMSVGD 0.00093, SVGD 0.0217 (against the JAX-drawn
    # reference before: seeds 1-3 0.00072-0.00091, 0.00072-0.0017, 0.0216-0.0221):
    # stick-breaking SVGD is 13-30x worse on every seed
    assert ed["MSVGD"] < ed["SVGD"], ed
    assert ed["CoinMSVGD"] < ed["SVGD"], ed
    # sets of 50 fresh exact draws against ref (30 keys): 0.00056-0.00255, median 0.00095,
    # 95th percentile 0.0023 (EXACT_50_Q95); CoinMSVGD sits at their median, SVGD 9x above
    assert ed["CoinMSVGD"] < EXACT_50_Q95, ed


# ~35 s (LKJ compiles slowly); test_validation names unsupported supports in the default run
@pytest.mark.slow
def test_unsupported_constraint_is_named_and_fallback_works():
    def model():
        numpyro.sample("L", dist.LKJCholesky(3, 1.0))

    with pytest.raises(ValueError, match=r"'L' has support .* no mirror map"):
        gf.MSVGD(model, num_particles=6, fallback=None).run(jax.random.key(0), 2,
                                                            progress_bar=False)
    for eng in (gf.MSVGD(model, num_particles=6),):
        s = eng.run(jax.random.key(0), 20, progress_bar=False).get_samples()
        assert s["L"].shape == (6, 3, 3)
        np.testing.assert_allclose(jnp.sum(s["L"] ** 2, -1), 1.0, atol=1e-5)  # unit-norm rows


def pareto_and_ordered():
    # greater_than(2) (a shifted entropic map) and an ordered vector (no mirror map: NumPyro's
    # transform by default) next to each other
    numpyro.sample("x", dist.Pareto(2.0, 5.0))
    numpyro.sample("o", dist.TransformedDistribution(
        dist.Normal(0.0, 1.0).expand([3]).to_event(1), dist.transforms.OrderedTransform()))


def test_greater_than_map_and_default_fallback():
    # Pareto(2, 5): mean 2.5, sd 0.645, support (2, inf). 200 particles: the mean's error
    # ~0.07 sd if they were iid; SVGD-type particles do better. Bound 0.2 sd; a map that
    # ignored the shift (theta = exp(eta)) would leave particles below 2.
    for eng in (gf.MSVGD(pareto_and_ordered, num_particles=200),
                gf.CoinMSVGD(pareto_and_ordered, num_particles=200)):
        s = eng.run(jax.random.key(0), 1000, progress_bar=False).get_samples()
        assert bool(jnp.all(s["x"] >= 2.0))   # (2 + exp(eta) rounds to 2 in float32 near 2)
        assert abs(float(jnp.mean(s["x"])) - 2.5) < 0.2 * 0.645, float(jnp.mean(s["x"]))
        assert bool(jnp.all(jnp.diff(s["o"], axis=-1) > 0))


@pytest.mark.slow   # ~37 s; the default run checks the coin engines as MCMC kernels (test_coin)
def test_mirrored_engine_as_mcmc_kernel():
    y = jnp.array([0.5, 1.2, -0.3])
    mcmc = MCMC(gf.CoinMSVGD(mixed_sites), num_warmup=30, num_samples=10, num_chains=10,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), y)
    s = mcmc.get_samples(group_by_chain=True)
    assert s["p"].shape == (10, 10, 4)
    np.testing.assert_allclose(s["p"].sum(-1), 1.0, atol=1e-5)
    run = gf.CoinMSVGD(mixed_sites, num_particles=10).run(jax.random.key(0), 40, y,
                                                          progress_bar=False)
    np.testing.assert_allclose(s["p"][:, -1], run.get_samples()["p"], rtol=1e-4, atol=1e-6)


def test_svmd_sparse_dirichlet():
    # measured (1000 steps, RMSprop 0.1): SVMD 0.00036 (MSVGD 0.00079), below the median of
    # sets of 50 exact draws (0.00095; their 95th percentile EXACT_50_Q95 = 0.0023)
    ref = sparse_reference()
    res = gf.SVMD(sparse_dirichlet, num_particles=50, optimizer=optax.rmsprop(0.1)).run(
        jax.random.key(0), 1000, progress_bar=False)
    p = res.get_samples()["p"]
    assert energy_distance(p, ref, scale_by=None) < EXACT_50_Q95
    assert 1 <= int(res.trace["num_eigen"][-1]) <= 50
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)


def test_svmd_auto_precondition_is_laplace_except_on_a_simplex():
    # SVMD's "auto": the Laplace-whitened dual (a PreconditionedState) for positive and
    # bounded sites; the plain dual where a site lies on a simplex (the sparse Dirichlet above
    # diverged at step 417 in Laplace coordinates)
    from numpyro_gflow.engines.base import PreconditionedState

    def positive_only():
        numpyro.sample("s", dist.Gamma(3.0, 2.0))
        numpyro.sample("b", dist.Uniform(-1.0, 2.0))

    auto = gf.SVMD(positive_only, num_particles=6).run(jax.random.key(0), 3, progress_bar=False)
    assert isinstance(auto.state, PreconditionedState)
    simplex = gf.SVMD(sparse_dirichlet, num_particles=6).run(jax.random.key(0), 3,
                                                            progress_bar=False)
    assert not isinstance(simplex.state, PreconditionedState)
    plain = gf.SVMD(positive_only, num_particles=6, precondition=None).run(
        jax.random.key(0), 3, progress_bar=False)
    assert not isinstance(plain.state, PreconditionedState)
    with pytest.raises(ValueError, match="'auto' or 'laplace' or None"):
        gf.SVMD(positive_only, precondition="whiten")


def test_svng_with_the_true_precision_converges_faster_than_svgd(conjugate):
    # natural gradient with metric = posterior precision is Newton-like on a Gaussian target:
    # measured max mean error 0.07 sd after 200 plain steps (SVGD with the same plain step
    # size 0.05 on the unscaled target: 0.82 sd)
    precision = jnp.diag(1 / conjugate.post_sd**2)
    run = lambda eng: eng.run(jax.random.key(0), 200, conjugate.y, progress_bar=False)  # noqa: E731
    # (in NumPyro's coordinates, precondition=None: the metric's effect is the claim)
    x = run(gf.SVNG(conjugate.model, num_particles=50, precondition=None, metric=precision,
                    step_size=0.5)).get_samples()["x"]
    x_h = run(gf.SVNG(conjugate.model, num_particles=50, precondition=None,
                      step_size=0.5)).get_samples()["x"]
    x0 = run(gf.SVNG(conjugate.model, num_particles=50, precondition=None, metric=jnp.eye(5),
                     step_size=0.05)).get_samples()["x"]
    err = lambda s: float(jnp.max(jnp.abs(s.mean(0) - conjugate.post_mean) / conjugate.post_sd))  # noqa: E731
    assert err(x) < 0.15 and err(x_h) < 0.15
    assert err(x0) > 3 * err(x)


def test_svng_rejects_bad_metric():
    with pytest.raises(ValueError, match="positive definite"):
        gf.SVNG(sparse_dirichlet, metric=-jnp.eye(3))
    with pytest.raises(ValueError, match="metric"):
        gf.SVNG(sparse_dirichlet, metric="fisher")


def test_mirrored_traces_carry_the_ksd():
    y = jnp.array([0.5, 1.2, -0.3])
    # in the paper's dual coordinates (precondition=None): the traced KSD is the claim here,
    # and the Laplace set-up would double the test's time
    for eng in (gf.MSVGD(mixed_sites, num_particles=10, step_size=0.5, trace_ksd=True,
                         precondition=None),
                gf.SVMD(mixed_sites, num_particles=10, step_size=0.5, trace_ksd=True,
                        precondition=None)):
        trace = eng.run(jax.random.key(0), 200, y, progress_bar=False).trace["ksd"]
        assert trace.shape == (200,) and np.all(np.isfinite(trace))
        assert trace[-1] < trace[0]
    # the per-step KSD costs O(n^2 d): only traced when asked for
    plain = gf.MSVGD(mixed_sites, num_particles=10, step_size=0.5, precondition=None).run(
        jax.random.key(0), 5, y, progress_bar=False)
    assert "ksd" not in plain.trace and "stein_sq_norm" in plain.trace
