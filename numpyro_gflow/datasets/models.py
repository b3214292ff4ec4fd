"""Posteriors used across the tests, the benchmark suite and the experiments: NumPyro models
(with their data where it is not a file) and, where one exists, an exact answer.

One owner for each: the tests import them from here (tests import nothing from
``benchmarks/``), and so do ``benchmarks/models.py`` and ``benchmarks/experiments/``.

* `logistic_regression` (for `load_breast_cancer`), `eight_schools_noncentered` with
  `EIGHT_SCHOOLS_SIGMA` / `EIGHT_SCHOOLS_Y`;
* `diabetes_regression` (for `load_diabetes`) and its exact `diabetes_log_evidence`;
* `correlated_logistic_data` / `correlated_logistic_model`: a logistic regression whose
  features correlate at ``rho`` (an ill-conditioned posterior);
* `grouped_regression_data` / `grouped_regression`: a hierarchical regression with an optional
  mini-batch plate;
* MixFlow's 2-d targets (Xu, Chen & Campbell 2023) with exact samplers ``(rng, n) -> (n, 2)``:
  `banana`, `cross`, `funnel`, `warped_gaussian` and their ``*_exact``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

__all__ = [
    "EIGHT_SCHOOLS_SIGMA",
    "EIGHT_SCHOOLS_Y",
    "banana",
    "banana_exact",
    "breast_cancer_theta_model",
    "correlated_logistic_data",
    "correlated_logistic_model",
    "cross",
    "cross_exact",
    "diabetes_log_evidence",
    "diabetes_regression",
    "eight_schools_noncentered",
    "funnel",
    "funnel_exact",
    "grouped_regression",
    "grouped_regression_data",
    "logistic_regression",
    "warped_gaussian",
    "warped_gaussian_exact",
]


# ------------------------------------------------------------ the benchmark suite's models
def logistic_regression(X, y=None):
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(logits=X @ w + b), obs=y)


EIGHT_SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], np.float32)
EIGHT_SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], np.float32)


def eight_schools_noncentered(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def breast_cancer_theta_model(X, y=None):
    """The breast-cancer logistic regression with one flat vector ``theta = (b, w)`` (b ~ N(0, 5),
    w ~ N(0, 1)): the FB-GVI experiments' form of `logistic_regression`."""
    d = X.shape[1] + 1
    scale = jnp.ones(d).at[0].set(5.0)
    theta = numpyro.sample("theta", dist.Normal(0.0, scale).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(logits=X @ theta[1:] + theta[0]), obs=y)


# ------------------------------------------------------------ diabetes regression
def diabetes_regression(X, y=None):
    w = numpyro.sample("w", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0, 1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(X @ w + b, sigma), obs=y)


def diabetes_log_evidence(X, y) -> float:
    """Exact log p(y) of `diabetes_regression` (float64): given sigma, (w, b) integrate out in
    closed form (y ~ N(0, sigma^2 I + X X^T + 1 1^T)); sigma by the trapezoid rule on a grid that
    holds its posterior (the integrand falls by > 10 nats at both ends on the shipped data)."""
    from scipy import stats

    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    A = np.column_stack([X, np.ones(len(y))])
    K = A @ A.T

    def log_joint(sigma):
        _, log_det = np.linalg.slogdet(sigma ** 2 * np.eye(len(y)) + K)
        quad = y @ np.linalg.solve(sigma ** 2 * np.eye(len(y)) + K, y)
        return -0.5 * (len(y) * np.log(2 * np.pi) + log_det + quad) + stats.halfnorm.logpdf(sigma)

    grid = np.linspace(0.6, 0.9, 151)
    values = np.array([log_joint(s) for s in grid])
    top = values.max()
    assert values[0] < top - 10 and values[-1] < top - 10, "sigma grid misses posterior mass"
    density = np.exp(values - top)
    # numpy < 2 has no np.trapezoid
    trapezoid = np.sum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))
    return float(top + np.log(trapezoid))


# ------------------------------------------------------------ correlated-feature logistic
def correlated_logistic_data(seed: int = 0, n: int = 300, d: int = 6, rho: float = 0.97):
    """Correlated-feature logistic-regression data (float32 X, int32 y)."""
    rng = np.random.default_rng(seed)
    corr = rho ** np.abs(np.subtract.outer(np.arange(d), np.arange(d)))
    X = rng.standard_normal((n, d)) @ np.linalg.cholesky(corr).T
    w_true = rng.standard_normal(d)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-X @ w_true))).astype(np.int32)
    return jnp.asarray(X, jnp.float32), jnp.asarray(y)


def correlated_logistic_model(X, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(logits=X @ w), obs=y)


def grouped_regression_data(seed: int = 0, n: int = 500, num_groups: int = 10):
    """Data for `grouped_regression`: group index (int32), predictor and response (float32),
    ``n`` rows in ``num_groups`` groups (intercepts 1 + 0.7 N(0, 1), slope 0.5, noise 0.8)."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, num_groups, n)
    x = rng.normal(size=n)
    alpha = 1.0 + 0.7 * rng.normal(size=num_groups)
    y = alpha[g] + 0.5 * x + 0.8 * rng.normal(size=n)
    return jnp.asarray(g, jnp.int32), jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def grouped_regression(g, x, y, batch=None, num_groups: int = 10):
    """A hierarchical regression: ``y ~ Normal(alpha[g] + beta x, sigma)``, group intercepts
    ``alpha ~ Normal(mu, tau)``; ``batch`` rows per step from a subsampled plate (None: all)."""
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfNormal(2))
    beta = numpyro.sample("beta", dist.Normal(0, 2))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2))
    with numpyro.plate("groups", num_groups):
        alpha = numpyro.sample("alpha", dist.Normal(mu, tau))
    with numpyro.plate("data", y.shape[0], subsample_size=batch) as idx:
        numpyro.sample("y", dist.Normal(alpha[g[idx]] + beta * x[idx], sigma), obs=y[idx])


# ------------------------------------------------------------ MixFlow's 2-d targets
def _flat2():
    return numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (2,)))


def banana():
    x1 = numpyro.sample("x1", dist.Normal(0.0, 10.0))
    numpyro.sample("x2", dist.Normal(0.1 * x1**2 - 10.0, 1.0))


def banana_exact(rng, n):
    x1 = rng.normal(0, 10, n)
    return np.stack([x1, rng.normal(0.1 * x1**2 - 10, 1.0)], 1)


_CROSS_LOCS = np.array([[0.0, 2.0], [-2.0, 0.0], [2.0, 0.0], [0.0, -2.0]])
_CROSS_SDS = np.array([[0.15, 1.0], [1.0, 0.15], [1.0, 0.15], [0.15, 1.0]])


def cross():
    x = _flat2()
    comp = dist.Normal(jnp.asarray(_CROSS_LOCS), jnp.asarray(_CROSS_SDS)).to_event(1)
    numpyro.factor("log_p", jax.nn.logsumexp(comp.log_prob(x)) - jnp.log(4.0))


def cross_exact(rng, n):
    k = rng.integers(0, 4, n)
    return _CROSS_LOCS[k] + _CROSS_SDS[k] * rng.normal(size=(n, 2))


def funnel():
    x1 = numpyro.sample("x1", dist.Normal(9.0, 6.0))
    numpyro.sample("x2", dist.Normal(0.0, jnp.exp(x1 / 4.0)))


def funnel_exact(rng, n):
    x1 = rng.normal(9.0, 6.0, n)
    return np.stack([x1, rng.normal(0.0, np.exp(x1 / 4.0))], 1)


def _warp(xy, sign):
    r = jnp.linalg.norm(xy, axis=-1)
    a = sign * r / 2
    c, s = jnp.cos(a), jnp.sin(a)
    return jnp.stack([c * xy[..., 0] - s * xy[..., 1], s * xy[..., 0] + c * xy[..., 1]], -1), r


def warped_gaussian():
    v, r = _warp(_flat2(), 1.0)
    numpyro.factor("log_p", -0.5 * v[0] ** 2 - 0.5 * (v[1] / 0.12) ** 2 + jnp.log(r))


def warped_gaussian_exact(rng, n):
    # in the rotated coordinates v = (x0, y0) the density is N(0, diag(1, 0.12^2)) x |v|
    # (rotation by r / 2 keeps r and area): rejection with bound |v| <= 6 (P(|v| > 6) < 1e-8)
    out = []
    while sum(len(o) for o in out) < n:
        v = rng.normal(size=(4 * n, 2)) * [1.0, 0.12]
        keep = rng.uniform(0, 6, 4 * n) < np.linalg.norm(v, axis=1)
        out.append(v[keep])
    v = np.concatenate(out)[:n]
    return np.asarray(_warp(jnp.asarray(v), -1.0)[0])
