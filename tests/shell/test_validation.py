"""Bad inputs: every engine answers with a ValueError / TypeError that names the site or argument.

One test per row of docs/validation.md. Model-level checks (discrete or missing latent sites,
a non-finite initial density, mismatched arguments, control flow on traced data) are run on
every engine; hyperparameter checks on the engines that take the argument. Most of these fail
before anything is compiled, so the module is fast.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import numpyro_gflow as gf
from support import compilations

# ------------------------------------------------------------------------------ engines, small
def _small(cls, **defaults):
    return lambda m, **kw: cls(m, **{**defaults, **kw})


ENGINES = {
    "SVGD": _small(gf.SVGD, num_particles=4),
    "CoinSVGD": _small(gf.CoinSVGD, num_particles=4),
    "KSDD": _small(gf.KSDD, num_particles=4, step_size=0.1),
    "CoinKSDD": _small(gf.CoinKSDD, num_particles=4),
    "CoinLAWGD": _small(gf.CoinLAWGD, num_particles=4, grid_size=16, num_eigen=4),
    "MSVGD": _small(gf.MSVGD, num_particles=4),
    "CoinMSVGD": _small(gf.CoinMSVGD, num_particles=4),
    "SVMD": _small(gf.SVMD, num_particles=4),
    "SVNG": _small(gf.SVNG, num_particles=4),
    "IsoGaussianMixtureVI": _small(gf.IsoGaussianMixtureVI, num_components=2, num_mc_samples=2,
                                   map_steps=0),
    "FBGVI": _small(gf.FBGVI, map_steps=0, num_mc_samples=4),
    "MixFlow": _small(gf.MixFlow, flow_length=2, num_leapfrog=2, num_tune_samples=2, num_draws=4),
}
MIRRORED = ("MSVGD", "CoinMSVGD", "SVMD")
KEY = jax.random.key(0)


def run(engine, *args, num_steps=2, key=KEY, **kwargs):
    return engine.run(key, num_steps, *args, progress_bar=False, **kwargs)


def raises(exc, *names):
    """pytest.raises whose message must mention every one of ``names``."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(n)})" for n in names))


# ------------------------------------------------------------------------------ models
def discrete_model(y):
    k = numpyro.sample("k", dist.Bernoulli(0.5))
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu + k, 1.0), obs=y)


def no_latent_model(y):
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def tiny_scale_model(y, scale):
    # a valid but tiny scale: (mu / scale)^2 overflows, log density -inf at every initial point
    mu = numpyro.sample("mu", dist.Normal(0.0, scale))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def bad_parameter_model(y, scale):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, scale), obs=y)   # scale < 0: NumPyro refuses it


def out_of_support_data_model(y):
    p = numpyro.sample("p", dist.Beta(1.0, 1.0))
    numpyro.sample("y", dist.Bernoulli(p), obs=y)        # y = 2 is not a Bernoulli value


def linreg(X, y):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    numpyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)


def python_control_flow_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    shift = 1.0 if float(jnp.max(y)) > 0 else 0.0        # needs a concrete y
    numpyro.sample("y", dist.Normal(mu + shift, 1.0), obs=y)


def data_bound_model(y):
    # the support of t depends on the data: t > max(y)
    t = numpyro.sample("t", dist.Uniform(jnp.max(y), 10.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Uniform(0.0, t), obs=y)


def latent_bound_model():
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    numpyro.sample("b", dist.Uniform(a, a + 1.0))        # support depends on another latent


def lkj_model():
    numpyro.sample("L", dist.LKJCholesky(3, 1.0))        # corr_cholesky: no mirror map


Y = jnp.array([0.3, -0.2, 0.5])


# ------------------------------------------------------------------------------ model checks
@pytest.mark.parametrize("name", ENGINES)
def test_discrete_latent_site(name):
    with raises(ValueError, "'k'", "discrete"):
        run(ENGINES[name](discrete_model), Y)


@pytest.mark.parametrize("name", ENGINES)
def test_no_latent_sites(name):
    with raises(ValueError, "no latent sample sites"):
        run(ENGINES[name](no_latent_model), Y)


@pytest.mark.parametrize("name", ENGINES)
def test_non_finite_initial_density_names_the_site(name):
    with raises(ValueError, "not finite at the initial point", "'mu' (latent"):
        run(ENGINES[name](tiny_scale_model), Y, jnp.array(1e-30))
    with pytest.warns(UserWarning, match="Out-of-support"), \
            raises(ValueError, "not finite at the initial point", "'y' (observed"):
        run(ENGINES[name](out_of_support_data_model), jnp.array([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("name", ENGINES)
def test_invalid_distribution_parameter_names_where(name):
    with raises(ValueError, "running the model", "after site 'mu'", "invalid scale parameter"):
        run(ENGINES[name](bad_parameter_model), Y, jnp.array(-1.0))


@pytest.mark.parametrize("name", ENGINES)
def test_mismatched_args_surface_the_models_error(name):
    X = jnp.ones((3, 4))  # w has 3 entries: X @ w cannot work
    with raises(ValueError, "running the model", "after site 'w'", "dot_general", "(4,) and (3,)"):
        run(ENGINES[name](linreg), X, Y)
    with raises(ValueError, "running the model", "before its first site",
                "missing 1 required positional argument"):
        run(ENGINES[name](linreg), Y)


@pytest.mark.parametrize("name", ENGINES)
def test_python_control_flow_on_traced_data(name):
    with raises(ValueError, "converts one of its array inputs", "Python scalars"):
        run(ENGINES[name](python_control_flow_model), Y)


@pytest.mark.parametrize("name", MIRRORED)
def test_mirrored_engines_refuse_data_dependent_supports(name):
    y = jnp.array([0.5, 1.0, 2.0])
    with raises(ValueError, "site 't'", "depend on the model's inputs", "SVGD"):
        run(ENGINES[name](data_bound_model), y)
    with raises(ValueError, "site 'b'", "other latent sites"):
        run(ENGINES[name](latent_bound_model))


@pytest.mark.parametrize("name", ["SVGD", "KSDD"])
def test_unconstrained_engines_follow_data_dependent_supports(name):
    """Documented behaviour: NumPyro's transforms are rebuilt at each evaluation, so the draws lie
    in the support for the data of *this* run, also when a compiled program is reused. (Every
    engine but the mirrored ones works in these coordinates; two stand for them here.)"""
    engine = ENGINES[name](data_bound_model)
    for y in (jnp.array([0.5, 1.0, 2.0]), jnp.array([0.5, 1.0, 6.0])):   # same shapes: reused
        t = np.asarray(run(engine, y).get_samples()["t"])
        assert np.all(t > float(jnp.max(y))) and np.all(t < 10.0)


@pytest.mark.parametrize("name", MIRRORED)
def test_site_without_mirror_map(name):
    # the default falls back to NumPyro's transform (tests/engines/test_mirror.py); strict
    # mode names the site, before anything compiles (it was reported ~35 s into a run, after
    # the initialisation compiled)
    gf.ModelBridge.from_model(lkj_model)   # tracing the model compiles its eager ops once
    compiles = compilations()
    before = len(compiles)
    with raises(ValueError, "site 'L'", "no mirror map", "fallback='numpyro'"):
        run(ENGINES[name](lkj_model, fallback=None))
    assert len(compiles) == before


def test_coin_lawgd_dimension_limit():
    def big():
        numpyro.sample("w", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
    with raises(ValueError, "at most 3", "'w'"):
        run(ENGINES["CoinLAWGD"](big))


# ------------------------------------------------------------------------------ run() arguments
@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("key", [0, "key", np.uint32(3), jax.random.split(KEY, 3)],
                         ids=["int", "str", "uint32-scalar", "batch-of-keys"])
def test_rng_key_type(name, key):
    with raises(TypeError, "rng_key", "PRNG key"):
        run(ENGINES[name](linreg), jnp.ones((3, 3)), Y, key=key)


@pytest.mark.parametrize("name", ENGINES)
def test_num_steps(name):
    engine = ENGINES[name](linreg)
    too_few = -1 if name == "MixFlow" else 0   # MixFlow: 0 steps keeps a given reference
    with raises(ValueError, "num_steps", ">="):
        run(engine, jnp.ones((3, 3)), Y, num_steps=too_few)
    with raises(TypeError, "num_steps", "int"):
        run(engine, jnp.ones((3, 3)), Y, num_steps=2.5)


def test_mixflow_kernel_reference_key():
    with raises(TypeError, "reference_key", "PRNG key"):
        gf.MixFlowKernel(linreg, reference_key=3)


# ------------------------------------------------------------------------------ hyperparameters
PARTICLE_ENGINES = {
    "SVGD": gf.SVGD, "CoinSVGD": gf.CoinSVGD,
    "KSDD": lambda m, **kw: gf.KSDD(m, step_size=0.1, **kw),
    "CoinKSDD": gf.CoinKSDD, "CoinLAWGD": gf.CoinLAWGD, "MSVGD": gf.MSVGD,
    "CoinMSVGD": gf.CoinMSVGD, "SVMD": gf.SVMD, "SVNG": gf.SVNG,
}


@pytest.mark.parametrize("name", PARTICLE_ENGINES)
def test_num_particles(name):
    with raises(ValueError, "num_particles", ">= 2"):
        PARTICLE_ENGINES[name](linreg, num_particles=1)
    with raises(TypeError, "num_particles", "int"):
        PARTICLE_ENGINES[name](linreg, num_particles=10.0)


# (engine, kwargs, error type, words the message must contain)
BAD_HYPERPARAMETERS = [
    # step sizes: zero, negative, non-finite, wrong type
    *[(e, {"step_size": s}, ValueError, ["step_size", "positive"])
      for e in ("SVGD", "KSDD", "CoinLAWGD", "MSVGD", "SVMD", "SVNG", "IsoGaussianMixtureVI",
                "FBGVI", "MixFlow")
      for s in (0.0, -0.1, float("inf"))],
    *[(e, {"step_size": "fast"}, (ValueError, TypeError), ["step_size"])
      for e in ("SVGD", "KSDD", "IsoGaussianMixtureVI", "FBGVI", "MixFlow")],
    ("SVGD", {"step_size": 0.1, "optimizer": optax.sgd(0.1)}, ValueError,
     ["step_size", "optimizer"]),
    ("SVGD", {"optimizer": "adam"}, TypeError, ["optimizer", "optax"]),
    ("KSDD", {"optimizer": optax.sgd(0.1)}, ValueError, ["step_size", "optimizer"]),
    # counts
    ("IsoGaussianMixtureVI", {"num_components": 0}, ValueError, ["num_components", ">= 1"]),
    ("IsoGaussianMixtureVI", {"num_mc_samples": 0}, ValueError, ["num_mc_samples", ">= 1"]),
    ("IsoGaussianMixtureVI", {"map_steps": -1}, ValueError, ["map_steps", ">= 0"]),
    ("FBGVI", {"num_mc_samples": 0}, ValueError, ["num_mc_samples", ">= 1"]),
    ("MixFlow", {"flow_length": 0}, ValueError, ["flow_length", ">= 1"]),
    ("MixFlow", {"num_leapfrog": 0}, ValueError, ["num_leapfrog", ">= 1"]),
    ("MixFlow", {"num_draws": 1}, ValueError, ["num_draws", ">= 2"]),
    ("MixFlow", {"step_scale": "sd"}, ValueError, ["step_scale", "'unit'"]),
    ("CoinLAWGD", {"grid_size": 2}, ValueError, ["grid_size", ">= 4"]),
    ("CoinLAWGD", {"num_eigen": 0}, ValueError, ["num_eigen", ">= 1"]),
    # unknown choices
    ("IsoGaussianMixtureVI", {"variance_update": "adam"}, ValueError,
     ["variance_update", "'ibw'", "'md'"]),
    ("IsoGaussianMixtureVI", {"initial_variance": -1.0}, ValueError,
     ["initial_variance", "'laplace'"]),
    ("IsoGaussianMixtureVI", {"preconditioner": "newton"}, ValueError,
     ["preconditioner", "'laplace'"]),
    ("IsoGaussianMixtureVI", {"average_last": 1.5}, ValueError, ["average_last", "[0, 1)"]),
    ("FBGVI", {"hessian": "bfgs"}, ValueError, ["hessian", "'exact'", "'stein'"]),
    ("FBGVI", {"stochastic": "yes"}, TypeError, ["stochastic", "bool"]),
    ("MixFlow", {"step_size_rule": "nuts"}, ValueError,
     ["step_size_rule", "'acceptance'", "'elbo'"]),
    ("MixFlow", {"reference": "laplace"}, ValueError, ["reference", "'meanfield'"]),
    ("MixFlow", {"target_accept": 1.5}, ValueError, ["target_accept", "(0, 1)"]),
    ("MixFlow", {"step_size_grid": ()}, ValueError, ["step_size_grid"]),
    ("MixFlow", {"step_size_grid": (0.1, -0.1)}, ValueError, ["step_size_grid", "positive"]),
    *[(e, {"fallback": "identity"}, ValueError, ["fallback", "'numpyro'"]) for e in MIRRORED],
    ("SVMD", {"eigen_threshold": 0.0}, ValueError, ["eigen_threshold", "(0, 1]"]),
    ("SVNG", {"eigen_threshold": 1.5}, ValueError, ["eigen_threshold", "(0, 1]"]),
    ("SVNG", {"decay": 0.0}, ValueError, ["decay", "(0, 1]"]),
    ("SVNG", {"decay": "fast"}, TypeError, ["decay"]),
    ("SVNG", {"jitter": -1e-3}, ValueError, ["jitter", "positive"]),
    ("SVNG", {"metric": "fisher"}, ValueError, ["metric", "'hessian'"]),
    ("SVNG", {"metric": np.ones((2, 3))}, ValueError, ["metric", "square"]),
    ("SVNG", {"metric": -np.eye(3)}, ValueError, ["metric", "positive definite"]),
    # coin betting
    *[(e, {"alpha": -1.0}, ValueError, ["alpha", ">= 0"])
      for e in ("CoinSVGD", "CoinKSDD", "CoinLAWGD", "CoinMSVGD")],
    ("CoinSVGD", {"alpha": "big"}, TypeError, ["alpha"]),
    # kernels: wrong type; a kernel that is not positive definite is refused by the kernel itself
    *[(e, {"kernel": "rbf"}, TypeError, ["kernel", "RBFKernel", "IMQKernel"])
      for e in ("SVGD", "CoinSVGD", "KSDD", "CoinKSDD", "MSVGD", "CoinMSVGD", "SVMD", "SVNG")],
]


@pytest.mark.parametrize("engine,kwargs,exc,words", BAD_HYPERPARAMETERS,
                         ids=[f"{e}-{'-'.join(map(str, k))}-{i}" for i, (e, k, _, _) in
                              enumerate(BAD_HYPERPARAMETERS)])
def test_bad_hyperparameter(engine, kwargs, exc, words):
    with raises(exc, *words):
        ENGINES[engine](linreg, **kwargs)


@pytest.mark.parametrize("make,exc,words", [
    (lambda: gf.RBFKernel(bandwidth=-1.0), ValueError, ["bandwidth", "positive"]),
    (lambda: gf.RBFKernel(bandwidth=0.0), ValueError, ["bandwidth", "positive"]),
    (lambda: gf.RBFKernel(bandwidth="silverman"), ValueError, ["bandwidth", "'median'"]),
    (lambda: gf.IMQKernel(bandwidth=-2.0), ValueError, ["bandwidth", "positive"]),
    (lambda: gf.IMQKernel(beta=0.5), ValueError, ["beta", "(-1, 0)"]),
    (lambda: gf.IMQKernel(beta=-1.5), ValueError, ["beta", "(-1, 0)"]),
    (lambda: gf.IMQKernel(c=0.0), ValueError, ["c must be positive"]),
    (lambda: gf.IMQKernel(beta="x"), TypeError, ["beta", "number"]),
    (lambda: gf.RBFKernel(block_size=0), ValueError, ["block_size"]),
], ids=["rbf-negative-bw", "rbf-zero-bw", "rbf-unknown-bw", "imq-negative-bw", "imq-beta-positive",
        "imq-beta-below-minus-one", "imq-c-zero", "imq-beta-type", "block-size-zero"])
def test_kernel_not_positive_definite(make, exc, words):
    with raises(exc, *words):
        make()


def test_coin_lawgd_bounds():
    def one_d():
        numpyro.sample("x", dist.Normal(0.0, 1.0))
    for bounds in [([1.0], [0.0]), ([float("nan")], [1.0]), ([0.0, 0.0], [1.0, 1.0])]:
        with raises(ValueError, "bounds", "high > low"):
            run(ENGINES["CoinLAWGD"](one_d, bounds=bounds))


def test_mixflow_reference_shape():
    with raises(ValueError, "reference", "length 3"):
        run(ENGINES["MixFlow"](linreg, reference=(jnp.zeros(2), jnp.ones(2))), jnp.ones((3, 3)), Y,
            num_steps=0)


def test_model_not_callable():
    with raises(TypeError, "model", "callable"):
        gf.SVGD("model")


# ------------------------------------------------------------------------ data and init shapes
def regression(x, y):
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(a + b * x, 1.0), obs=y)


X5 = jnp.linspace(-1.0, 1.0, 5)
Y5 = 0.5 + 2.0 * X5


@pytest.mark.parametrize("name", ENGINES)
def test_observations_one_short_name_the_site(name):
    # NumPyro's own message spoke of "model and guide shapes" (a guide the user does not have)
    with raises(ValueError, "observed site 'y'", "(4,)", "(5,)"):
        run(ENGINES[name](regression), X5, Y5[:4])


@pytest.mark.parametrize("name", ["SVGD", "FBGVI", "MixFlow"])
def test_input_with_an_extra_axis_is_an_error_not_a_broadcast(name):
    # x of shape (5, 1): the likelihood would broadcast to (5, 5) and count every y five times
    with raises(ValueError, "observed site 'y'", "(5, 5)", "extra axis"):
        run(ENGINES[name](regression), X5[:, None], Y5)


def test_observed_value_with_leading_singleton_axes_is_accepted():
    # (1, 5) against a (5,) value adds no copies of an observation: not an error
    def model(x, y):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(a + x[None, :], 1.0).to_event(0), obs=y)

    res = run(ENGINES["SVGD"](model), X5, Y5)
    assert res.get_samples()["a"].shape == (4,)


@pytest.mark.parametrize("name", ["SVGD", "IsoGaussianMixtureVI", "FBGVI"])
def test_init_params_missing_or_extra_sites_are_named(name):
    eng = ENGINES[name](regression)
    rows = eng.num_points if hasattr(eng, "num_points") else 4
    with raises(ValueError, "init_params", "missing latent site(s) ['b']"):
        run(eng, X5, Y5, init_params={"a": jnp.zeros(rows)})
    with raises(ValueError, "init_params", "'y' is an observed site"):
        run(eng, X5, Y5, init_params={"a": jnp.zeros(rows), "b": jnp.zeros(rows),
                                      "y": jnp.zeros((rows, 5))})
    with raises(ValueError, "init_params['b']", f"shape ({rows}, 3)"):
        run(eng, X5, Y5, init_params={"a": jnp.zeros(rows), "b": jnp.zeros((rows, 3))})
    with raises(TypeError, "init_params", "dict"):
        run(eng, X5, Y5, init_params=jnp.zeros((rows, 2)))


def test_mixflow_kernel_init_params_are_checked():
    from numpyro.infer import MCMC

    kern = gf.MixFlowKernel(regression, flow_length=2, num_leapfrog=2, num_tune_samples=2)
    mcmc = MCMC(kern, num_warmup=0, num_samples=2, progress_bar=False)
    compiles = compilations()
    before = len(compiles)
    with raises(ValueError, "init_params", "missing latent site(s) ['b']"):
        mcmc.run(KEY, X5, Y5, init_params={"a": jnp.zeros(())})
    # before the reference fit compiles (it did: ~10 s before the error)
    assert len(compiles) == before
