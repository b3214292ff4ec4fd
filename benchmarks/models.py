"""The benchmark model set: NumPyro models, their inputs, the sites to compare, a reference.

Each :class:`BenchModel` gives

* ``model`` and its inputs ``args`` / ``kwargs``;
* ``sites``: the latent sites the engines are compared on (constrained space; deterministic
  sites are left out);
* how its reference posterior sample is made: ``exact`` (a function drawing independent exact
  samples) or, where no exact sampler exists, a long NUTS run (``reference_nuts``: settings
  for :func:`benchmarks.references.nuts_reference`);
* ``overrides``: per-engine keyword overrides for this model, e.g. a smaller SVGD step size
  (``{"SVGD": {"step_size": 0.01}}``); :mod:`benchmarks.run` applies them.

``MODELS`` maps name -> BenchModel, in the order the benchmark runs them. Models are built
lazily (``get_model(name)``) so importing this module does not read data files.

The reference samples themselves are made once by ``python -m benchmarks.references`` and
cached as ``benchmarks/references/<name>.npz``; :func:`load_reference` reads them back.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from numpyro_gflow.datasets import load_breast_cancer
from numpyro_gflow.datasets.models import (
    EIGHT_SCHOOLS_SIGMA,
    EIGHT_SCHOOLS_Y,
    eight_schools_noncentered,
    logistic_regression,
)

__all__ = ["BenchModel", "MODELS", "MODEL_NAMES", "get_model", "load_reference", "REFERENCE_DIR"]

REFERENCE_DIR = Path(__file__).resolve().parent / "references"


@dataclasses.dataclass(frozen=True)
class BenchModel:
    name: str
    description: str
    model: Callable
    args: tuple
    sites: tuple[str, ...]
    kwargs: dict = dataclasses.field(default_factory=dict)
    #: (rng_key, n) -> {site: (n, ...) array}: independent exact posterior draws, or None
    exact: Optional[Callable] = None
    #: settings for a long-NUTS reference when there is no exact sampler
    reference_nuts: Optional[dict] = None
    #: engine name -> keyword overrides for this model
    overrides: dict = dataclasses.field(default_factory=dict)

    @property
    def reference_method(self) -> str:
        return "exact" if self.exact is not None else "nuts"

    def reference_path(self) -> Path:
        return REFERENCE_DIR / f"{self.name}.npz"


# ---------------------------------------------------------------------- 1. logistic regression
def _logistic() -> BenchModel:
    X, y = load_breast_cancer()          # standardised (population sd), float64 / int32
    X, y = jnp.asarray(X, jnp.float32), jnp.asarray(y)
    return BenchModel(
        name="logistic",
        description="Bayesian logistic regression, breast-cancer data (569 x 30, standardised); "
                    "b ~ N(0, 5), w ~ N(0, 1)^30; d = 31",
        model=logistic_regression, args=(X, y), sites=("b", "w"),
        reference_nuts=dict(num_warmup=1000, num_samples=2500, num_chains=4, seed=0),
    )


# ---------------------------------------------------------------------- 2. eight schools
def _eight_schools() -> BenchModel:
    return BenchModel(
        name="eight_schools",
        description="eight schools, non-centred; mu ~ N(0, 5), tau ~ HalfCauchy(5), "
                    "theta_tilde ~ N(0, 1)^8; d = 10",
        model=eight_schools_noncentered,
        args=(jnp.asarray(EIGHT_SCHOOLS_SIGMA), jnp.asarray(EIGHT_SCHOOLS_Y)),
        sites=("mu", "tau", "theta_tilde"),
        reference_nuts=dict(num_warmup=2000, num_samples=5000, num_chains=4, seed=0,
                            target_accept_prob=0.95),
    )


# ---------------------------------------------------------------------- 3. correlated Gaussian
CORR_D = 10
CORR_RHO = 0.9


def _corr_gaussian_params():
    scales = np.logspace(-0.5, 0.5, CORR_D)                         # 0.32 ... 3.2
    corr = CORR_RHO * np.ones((CORR_D, CORR_D)) + (1 - CORR_RHO) * np.eye(CORR_D)
    cov = corr * np.outer(scales, scales)
    loc = np.linspace(-2.0, 2.0, CORR_D)
    return (jnp.asarray(loc, jnp.float32),
            jnp.asarray(np.linalg.cholesky(cov), jnp.float32))


def correlated_gaussian(loc, scale_tril):
    numpyro.sample("x", dist.MultivariateNormal(loc, scale_tril=scale_tril))


def _correlated_gaussian() -> BenchModel:
    loc, tril = _corr_gaussian_params()

    def exact(rng_key, n):
        z = jax.random.normal(rng_key, (n, CORR_D))
        return {"x": loc + z @ tril.T}

    return BenchModel(
        name="corr_gaussian",
        description=f"Gaussian, d = {CORR_D}, all correlations {CORR_RHO}, sds log-spaced "
                    "0.32-3.2, means -2..2",
        model=correlated_gaussian, args=(loc, tril), sites=("x",), exact=exact,
    )


# ---------------------------------------------------------------------- 4. two-mode mixture
MIX_LOCS = np.array([[-3.0, 0.0], [3.0, 0.0]], np.float32)


def two_mode_mixture(locs):
    mix = dist.MixtureSameFamily(
        dist.Categorical(probs=jnp.full(locs.shape[0], 1.0 / locs.shape[0])),
        dist.Normal(locs, 1.0).to_event(1),
    )
    numpyro.sample("x", mix)


def _mixture() -> BenchModel:
    locs = jnp.asarray(MIX_LOCS)

    def exact(rng_key, n):
        k1, k2 = jax.random.split(rng_key)
        comp = jax.random.bernoulli(k1, 0.5, (n,)).astype(jnp.int32)
        return {"x": locs[comp] + jax.random.normal(k2, (n, 2))}

    return BenchModel(
        name="mixture",
        description="2-D equal-weight mixture of N((-3, 0), I) and N((3, 0), I)",
        model=two_mode_mixture, args=(locs,), sites=("x",), exact=exact,
    )


# ---------------------------------------------------------------------- 5. Dirichlet-multinomial
DIRMULT_ALPHA = np.ones(5, np.float32)
DIRMULT_COUNTS = np.array([12.0, 5.0, 3.0, 0.0, 20.0], np.float32)


def dirichlet_multinomial(alpha, counts):
    p = numpyro.sample("p", dist.Dirichlet(alpha))
    numpyro.sample("counts", dist.Multinomial(total_count=counts.sum(), probs=p), obs=counts)


def _dirichlet_multinomial() -> BenchModel:
    alpha, counts = jnp.asarray(DIRMULT_ALPHA), jnp.asarray(DIRMULT_COUNTS)

    def exact(rng_key, n):
        return {"p": dist.Dirichlet(alpha + counts).sample(rng_key, (n,))}

    return BenchModel(
        name="dirichlet_multinomial",
        description="p ~ Dirichlet(1^5), counts (12, 5, 3, 0, 20) ~ Multinomial(40, p); "
                    "simplex, d = 4 unconstrained",
        model=dirichlet_multinomial, args=(alpha, counts), sites=("p",), exact=exact,
    )


# ---------------------------------------------------------------------- 6. Neal's funnel
FUNNEL_D = 10


def funnel(dim=FUNNEL_D):
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([dim - 1]).to_event(1))


def _funnel() -> BenchModel:
    def exact(rng_key, n):
        k1, k2 = jax.random.split(rng_key)
        v = 3.0 * jax.random.normal(k1, (n,))
        x = jnp.exp(v / 2)[:, None] * jax.random.normal(k2, (n, FUNNEL_D - 1))
        return {"v": v, "x": x}

    return BenchModel(
        name="funnel",
        description=f"Neal's funnel (centred), v ~ N(0, 3), x_i ~ N(0, exp(v/2)); d = {FUNNEL_D}",
        model=funnel, args=(), kwargs={"dim": FUNNEL_D}, sites=("v", "x"), exact=exact,
    )


# ---------------------------------------------------------------------- 7. banana
BANANA_SD1 = float(np.sqrt(10.0))
BANANA_B = 0.1


def banana(sd1=BANANA_SD1, b=BANANA_B):
    x1 = numpyro.sample("x1", dist.Normal(0.0, sd1))
    numpyro.sample("x2", dist.Normal(b * (x1**2 - sd1**2), 1.0))


def _banana() -> BenchModel:
    def exact(rng_key, n):
        k1, k2 = jax.random.split(rng_key)
        x1 = BANANA_SD1 * jax.random.normal(k1, (n,))
        x2 = BANANA_B * (x1**2 - BANANA_SD1**2) + jax.random.normal(k2, (n,))
        return {"x1": x1, "x2": x2}

    return BenchModel(
        name="banana",
        description=f"banana: x1 ~ N(0, sqrt(10)), x2 | x1 ~ N({BANANA_B} (x1^2 - 10), 1)",
        model=banana, args=(), sites=("x1", "x2"), exact=exact,
    )


# ---------------------------------------------------------------------- registry
MODELS: dict[str, Callable[[], BenchModel]] = {
    "logistic": _logistic,
    "eight_schools": _eight_schools,
    "corr_gaussian": _correlated_gaussian,
    "mixture": _mixture,
    "dirichlet_multinomial": _dirichlet_multinomial,
    "funnel": _funnel,
    "banana": _banana,
}
MODEL_NAMES = tuple(MODELS)

_cache: dict[str, BenchModel] = {}


def get_model(name: str) -> BenchModel:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if name not in _cache:
        _cache[name] = MODELS[name]()
    return _cache[name]


def load_reference(name: str) -> tuple[dict, dict]:
    """(samples: site -> (m, ...) float32 array, info: how they were made) for model ``name``."""
    bm = get_model(name)
    path = bm.reference_path()
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m benchmarks.references` first")
    with np.load(path) as f:
        info = json.loads(str(f["__info__"]))
        samples = {k: f[k] for k in f.files if k != "__info__"}
    return samples, info
