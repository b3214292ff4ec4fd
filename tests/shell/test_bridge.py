import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import initialize_model

import numpyro_gflow as gf
from numpyro_gflow import ModelBridge
from conftest import linreg_model


def test_log_density_matches_numpyro_potential(linreg_data):
    X, y = linreg_data
    bridge = ModelBridge.from_model(linreg_model, X, y)
    assert bridge.dim == 4 and bridge.site_names == ("sigma", "w")
    info, potential_fn, _, _ = initialize_model(jax.random.key(0), linreg_model, model_args=(X, y))
    params = info.z
    z = bridge.flatten(params)
    np.testing.assert_allclose(bridge.log_density(z, (X, y)), -potential_fn(params), rtol=1e-6)
    # gradient by hand: d/d log-sigma of the Gaussian log-likelihood + HalfNormal prior + Jacobian
    lp, g = bridge.value_and_grad(z, (X, y))
    g_ref = jax.grad(lambda p: -potential_fn(p))(params)
    np.testing.assert_allclose(g, bridge.flatten(g_ref), rtol=1e-5)


def test_density_inside_a_program_traces_the_model_once_and_matches(linreg_data):
    # inside a program (point and data traced) the model is traced through NumPyro once per
    # input signature; gradients, Hessian-vector products and vmaps replay that trace
    X, y = linreg_data
    calls = []

    def model(X, y, scale=1.0):
        calls.append(1)
        linreg_model(X * scale, y)

    bridge = ModelBridge.from_model(model, X, y, scale=2.0)
    z = jnp.array([0.3, 0.2, -0.1, -0.5])

    def quantities(z, X, y):
        lp = lambda x: bridge.log_density(x, (X, y), {"scale": 2.0})   # noqa: E731
        hvp = jax.jvp(jax.grad(lp), (z,), (jnp.ones_like(z),))[1]
        return lp(z), jax.grad(lp)(z), hvp, jax.vmap(lp)(jnp.stack([z, 2 * z]))

    calls.clear()
    inside = jax.jit(quantities)(z, X, y)
    assert len(calls) == 1
    outside = quantities(z, np.asarray(X), np.asarray(y))   # concrete data: the plain path
    assert len(calls) > 1
    for a, b in zip(inside, outside):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # another static input is another trace, with its own value
    other = jax.jit(lambda z, X, y: bridge.log_density(z, (X, y), {"scale": 1.0}))(z, X, y)
    assert not np.isclose(other, inside[0])


def test_flatten_roundtrip_and_constrain(linreg_data):
    X, y = linreg_data
    bridge = ModelBridge.from_model(linreg_model, X, y)
    z = bridge.flatten({"w": jnp.array([0.3, 0.2, -0.1]), "sigma": jnp.array(-1.0)})
    np.testing.assert_array_equal(bridge.flatten(bridge.unflatten(z)), z)
    c = bridge.constrain(z, (X, y))
    assert set(c) == {"w", "sigma", "w_norm"}
    np.testing.assert_allclose(c["sigma"], jnp.exp(-1.0), rtol=1e-6)  # HalfNormal -> exp transform
    np.testing.assert_allclose(c["w_norm"], jnp.linalg.norm(c["w"]), rtol=1e-6)
    cb = bridge.constrain_batch(jnp.stack([z, z]), (X, y))
    assert cb["w"].shape == (2, 3) and cb["sigma"].shape == (2,)


def test_discrete_latent_site_is_named():
    def model():
        numpyro.sample("mu", dist.Normal())
        numpyro.sample("k", dist.Categorical(probs=jnp.ones(3) / 3))

    with pytest.raises(ValueError, match=r"'k'.*discrete.*enumerate"):
        ModelBridge.from_model(model)


def test_no_latent_sites():
    def model(y):
        numpyro.sample("y", dist.Normal(0, 1), obs=y)

    with pytest.raises(ValueError, match="no latent sample sites"):
        ModelBridge.from_model(model, jnp.ones(3))


def test_non_finite_initial_density_names_the_site():
    import numpyro_gflow as gf

    def model(y):
        scale = numpyro.sample("scale", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Exponential(scale), obs=y)   # negative data: outside the support

    with pytest.raises(ValueError, match=r"'y' \(observed, non-finite log density\)"):
        gf.SVGD(model, num_particles=4).run(jax.random.key(0), 5, -jnp.ones(3), progress_bar=False)


@pytest.mark.parametrize("N", [200, 2000])   # 10 and 100 batches: without / with replacement
def test_subsampled_plate_is_unbiased(N):
    from numpyro_gflow.bridge import PERMUTE_MAX_RATIO

    x = jax.random.normal(jax.random.key(0), (N,)) + 1.0

    def model(x):
        mu = numpyro.sample("mu", dist.Normal(0, 10))
        with numpyro.plate("data", N, subsample_size=20) as idx:
            numpyro.sample("x", dist.Normal(mu, 1), obs=x[idx])

    bridge = ModelBridge.from_model(model, x)
    assert bridge.subsample_plates[0].subsample_size == 20
    assert (N <= PERMUTE_MAX_RATIO * 20) == (N == 200)
    z = jnp.array([0.7])
    full = bridge.log_density(z, (x,))
    ref = dist.Normal(0, 10).log_prob(0.7) + dist.Normal(0.7, 1).log_prob(x).sum()
    np.testing.assert_allclose(full, ref, rtol=1e-5)
    keys = jax.random.split(jax.random.key(1), 2000)
    mb = jax.vmap(lambda k: bridge.log_density(z, (x,), rng_key=k))(keys)
    assert jnp.std(mb) > 1.0  # really subsampled
    se = jnp.std(mb) / jnp.sqrt(len(keys))
    assert abs(jnp.mean(mb) - full) < 4 * se


def test_improper_uniform_site_with_factor():
    # dist.ImproperUniform cannot be sampled: the bridge traces with NumPyro's init values
    from numpyro.distributions import constraints

    def model():
        x = numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (2,)))
        numpyro.factor("lp", -0.5 * jnp.sum((x - 1.0) ** 2))

    bridge = ModelBridge.from_model(model)
    assert bridge.dim == 2
    np.testing.assert_allclose(bridge.value_and_grad(jnp.zeros(2))[1], [1.0, 1.0], rtol=1e-6)


def test_factor_sites_stay_out_of_the_log_likelihood_and_loo_works():
    # a model with a soft constraint (numpyro.factor) and two observed sites, one of them
    # masked: the factor used to land in log_likelihood, and az.loo raised "Found several log
    # likelihood arrays ['lik', 'soft']"
    import arviz as az

    x = jnp.linspace(-1.0, 1.0, 20)
    y = 1.0 + 0.5 * x + 0.3 * jnp.sin(7.0 * x)
    z = jnp.where(jnp.arange(20) % 4 == 0, jnp.nan, 2.0 * y)

    def model(x, y, z):
        a = numpyro.sample("a", dist.Normal(0.0, 2.0))
        b = numpyro.sample("b", dist.Normal(0.0, 2.0))
        numpyro.factor("soft", -0.5 * (a - b) ** 2)
        mu = numpyro.deterministic("mu", a + b * x)
        with numpyro.plate("data", 20):
            numpyro.sample("lik", dist.Normal(mu, 0.5), obs=y)
            ok = jnp.isfinite(z)
            numpyro.sample("z", dist.Normal(2.0 * mu, 1.0).mask(ok), obs=jnp.where(ok, z, 0.0))

    res = gf.SVGD(model, num_particles=30).run(jax.random.key(0), 100, x, y, z,
                                                progress_bar=False)
    assert res.bridge.factor_sites == ("soft",)
    assert set(res.log_likelihood()) == {"lik", "z"}
    assert set(res.log_likelihood(factors=True)) == {"lik", "z", "soft"}
    dt = res.to_arviz()
    assert set(dt["log_likelihood"].data_vars) == {"lik", "z"}
    assert set(dt["observed_data"].data_vars) == {"lik", "z"}
    assert "mu" in dt["posterior"].data_vars
    loo = az.loo(dt, var_name="lik")
    assert np.isfinite(loo.elpd)
    # the ArviZ 1.x reports and plots read the same DataTree: a row per latent scalar and
    # deterministic value, one panel per variable (matplotlib, no display)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = az.summary(dt, kind="stats")
    assert {"a", "b"} <= set(table.index) and "mu[0]" in table.index
    samples = res.get_samples()
    np.testing.assert_allclose(table.loc["a", "mean"], np.mean(samples["a"]), rtol=1e-2,
                               atol=1e-2)
    for plot in (az.plot_trace, az.plot_dist):
        pc = plot(dt, var_names=["a", "b"])
        assert pc is not None
        plt.close("all")
    az.summary(dt)

    # a factor beside one observed site: az.loo needs no var_name (it raised TypeError)
    def model1(x, y):
        a = numpyro.sample("a", dist.Normal(0.0, 2.0))
        numpyro.factor("soft", -0.5 * a**2)
        with numpyro.plate("data", 20):
            numpyro.sample("lik", dist.Normal(a + 0.5 * x, 0.5), obs=y)

    dt1 = gf.SVGD(model1, num_particles=30).run(jax.random.key(0), 100, x, y,
                                               progress_bar=False).to_arviz()
    assert np.isfinite(az.loo(dt1).elpd)
