import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import numpyro_gflow as gf


def normal_1d():
    numpyro.sample("x", dist.Normal(1.0, 2.0))


def correlated_2d():
    numpyro.sample("x", dist.MultivariateNormal(jnp.array([1.0, -1.0]),
                                                jnp.array([[1.0, 0.6], [0.6, 2.0]])))


def bimodal_1d():
    numpyro.sample("x", dist.MixtureSameFamily(dist.Categorical(jnp.array([0.5, 0.5])),
                                               dist.Normal(jnp.array([-2.0, 2.0]), 0.7)))


def test_generator_eigenvalues_match_hermite():
    # for N(m, s^2) the Langevin generator has eigenvalues k / s^2 (Hermite polynomials)
    eng = gf.CoinLAWGD(normal_1d, num_particles=20, bounds=(jnp.array([-11.0]), jnp.array([13.0])))
    state = eng.run(jax.random.key(0), 2, progress_bar=False).state
    # the engine's coordinates u = (x - centre) / spread put the box at +-6: spread = 24 / 12,
    # and there N(1, 2^2) is N(0, (2 / spread)^2)
    spread = float(state.coords.scale[0, 0])
    assert spread == pytest.approx(2.0)
    eigenvalues = state.core.basis.eigenvalues
    # finite differences (400 points over the box) are ~1.7% high by k = 7
    assert abs(eigenvalues[0]) < 5e-3
    np.testing.assert_allclose(eigenvalues[1:8], np.arange(1, 8) * spread**2 / 4.0, rtol=0.02)


def test_pure_coin_lawgd_from_uniform_start_2d():
    # explicit box: no pilot, LAWGD alone moves particles from init_to_uniform's (-2, 2)^2
    eng = gf.CoinLAWGD(correlated_2d, num_particles=100,
                       bounds=(jnp.array([-6.0, -8.0]), jnp.array([8.0, 6.0])))
    x = eng.run(jax.random.key(0), 1000, progress_bar=False).get_samples()["x"]
    # measured mean err <= 0.0007, cov err <= 0.008 (seeds 0-3: <= 0.0007 / 0.012): the particles
    # are far from iid (100 iid draws: mean MC error 0.1-0.14, cov 0.14-0.28); the seeds agree to
    # 0.004; the uniform start is 1 off in the mean and 0.33-0.67 in the covariance
    np.testing.assert_allclose(x.mean(0), [1.0, -1.0], atol=0.05)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), [[1.0, 0.6], [0.6, 2.0]], atol=0.12)


def test_coin_lawgd_default_box_bimodal():
    x = gf.CoinLAWGD(bimodal_1d, num_particles=100).run(
        jax.random.key(0), 1000, progress_bar=False).get_samples()["x"]
    true_sd = np.sqrt(0.7**2 + 2.0**2)
    # measured mean 6e-5 sd, sd ratio 0.999, mass 0.50 (seeds 0-3 the same to 1e-4: the start
    # barely matters); 5 % is 50x the measured sd error. One mode held: sd ratio 0.33, mass 0 or 1
    assert abs(float(x.mean())) < 0.1 * true_sd
    assert abs(float(x.std()) / true_sd - 1) < 0.05
    assert 0.4 < float(jnp.mean(x > 0)) < 0.6  # both modes held


@pytest.mark.slow
def test_coin_lawgd_3d():
    # measured: means within 0.001, sds 0.97 / 0.485 / 1.94 for 1 / 0.5 / 2 (grid 22^3; 0.59
    # for the narrowest before the engine moved to the pilot's standardised coordinates)
    def model():
        numpyro.sample("x", dist.Normal(jnp.array([0.0, 1.0, 2.0]),
                                        jnp.array([1.0, 0.5, 2.0])).to_event(1))

    x = gf.CoinLAWGD(model, num_particles=100).run(jax.random.key(0), 1000,
                                                   progress_bar=False).get_samples()["x"]
    sd = np.array([1.0, 0.5, 2.0])
    assert np.all(np.abs(np.asarray(x.mean(0)) - [0, 1, 2]) / sd < 0.1)
    assert np.all(np.abs(np.asarray(x.std(0)) / sd - 1) < 0.25)


def test_dimension_limit_is_named():
    def model():
        numpyro.sample("z", dist.Normal(0, 1).expand([4]).to_event(1))

    with pytest.raises(ValueError, match=r"at most 3 .* has 4"):
        gf.CoinLAWGD(model, num_particles=10).run(jax.random.key(0), 5, progress_bar=False)


def test_bad_bounds():
    with pytest.raises(ValueError, match="bounds"):
        gf.CoinLAWGD(normal_1d, bounds=(jnp.array([1.0]), jnp.array([0.0]))).run(
            jax.random.key(0), 5, progress_bar=False)


Y_SCALE = np.asarray(jax.random.normal(jax.random.key(1), (30,)) * 2.0 + 1.0)


def normal_unknown_scale(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(5.0))
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_default_box_on_a_2d_model_with_a_narrow_scale():
    # issue 20: on this 2-d posterior (log sigma's sd 0.14) coin betting's first bets, about one
    # unit of NumPyro's space, sent 16 % of the particles out of the grid box at steps 2-5 for
    # good (no force outside), and the rest ended 1.6-2.1x too wide: sd ratios 1.8 (mu) and 3.0
    # (sigma). In the pilot's standardised coordinates: 0.99 and 0.97, none outside.
    # Reference: the posterior by quadrature on a (mu, log sigma) grid.
    mu = np.linspace(-3.0, 5.0, 801)[:, None]
    log_s = np.linspace(-1.0, 2.5, 701)[None, :]
    sigma = np.exp(log_s)
    y = Y_SCALE.astype(np.float64)
    ss = ((y[:, None, None] - mu[None]) ** 2).sum(0)
    log_post = (-0.5 * (mu / 5.0) ** 2 - 0.5 * (sigma / 5.0) ** 2 + log_s     # + log-Jacobian
                - len(y) * log_s - 0.5 * ss / sigma**2)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    grid = {"mu": np.broadcast_to(mu, w.shape), "sigma": np.broadcast_to(sigma, w.shape)}
    result = gf.CoinLAWGD(normal_unknown_scale).run(jax.random.key(0), 1000, Y_SCALE,
                                                    progress_bar=False)
    samples = result.get_samples()
    for name, values in grid.items():
        mean = (w * values).sum()
        sd = np.sqrt((w * (values - mean) ** 2).sum())
        x = np.asarray(samples[name], np.float64)
        # 100 particles: an iid sample's mean is within 0.3 sd and its sd within 20 % at about
        # 3 standard errors; the measured 0.01 sd and 0.97-0.99 leave room
        assert abs(x.mean() - mean) / sd < 0.3, (name, x.mean(), mean, sd)
        assert 0.8 < x.std() / sd < 1.2, (name, x.std() / sd)
    assert float(result.trace["outside_fraction"][-1]) < 0.01
