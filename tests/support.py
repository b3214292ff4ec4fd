"""Test-side copies of benchmark models and experiment harnesses that tests check.

Tests import nothing from ``benchmarks/`` (a folder of scripts, not part of the package). Where
a test checks a benchmark's model or an experiment's claim, the code it needs is here, copied
from the named file with only names changed where two copies would clash; keep the two in step
(a change to one without the other makes the test check something else than the experiment
reports). Data come from :mod:`numpyro_gflow.datasets`; cached references from ``tests/data/``.

Sections:

* the benchmark suite's logistic regression and eight schools (``benchmarks/models.py``);
  their NUTS moments are ``tests/data/{logistic,eight_schools}_nuts_moments.npz``;
* the diabetes regression and its exact evidence
  (``benchmarks/experiments/mixflow_realdata/mixflow_realdata.py``);
* FB-GVI: the breast-cancer model and BW-SGD step of
  ``benchmarks/experiments/fbgvi_curves/fbgvi_curves.py``, the Gaussian target of
  ``.../fbgvi_paper/fbgvi_paper.py``, the logistic data and runner of
  ``.../fbgvi_notebook/fbgvi_notebook.py``;
* SVNG: the correlated-feature logistic regression of
  ``.../svng_conditioning/svng_conditioning.py``;
* MixFlow: the paper's cross, funnel and warped-Gaussian targets and ``run_target`` of
  ``.../mixflow_targets/mixflow_targets.py``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS

import numpyro_gflow as gf
from numpyro_gflow.core import fbgvi
from numpyro_gflow.diagnostics import energy_distance


# ------------------------------------------------------------ benchmarks/models.py
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


# ------------------------------------------------------------ mixflow_realdata.py
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


# ------------------------------------------------------------ fbgvi_curves.py
def breast_cancer_theta_model(X, y=None):
    d = X.shape[1] + 1
    scale = jnp.ones(d).at[0].set(5.0)
    theta = numpyro.sample("theta", dist.Normal(0.0, scale).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(logits=X @ theta[1:] + theta[0]), obs=y)


#: BW-SGD, the paper's baseline, lives in the core
bw_sgd_step = fbgvi.bw_sgd_step


# ------------------------------------------------------------ fbgvi_paper.py
DIM = 5
ALPHA, BETA = 0.01, 1.0           # the notebook's GaussianExperiment defaults
TARGET_SEED = 0
CONST_ALPHA = 1e-12               # "constant step": h / (1 + 1e-12 h k)


def make_target(seed: int = TARGET_SEED, dim: int = DIM, alpha: float = ALPHA, beta: float = BETA):
    """(mu*, Sigma*, A = Sigma*^-1) with covariance eigenvalues geomspace(1/beta, 1/alpha, dim)
    in a Haar-random basis and mu* ~ U(0, 1)^dim."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.0, 1.0, dim)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))
    eig = np.geomspace(1.0 / beta, 1.0 / alpha, dim)
    return mu, (q * eig) @ q.T, (q / eig) @ q.T


def oracles(mu, A):
    """``score_fn(x, key) -> (log pi(x), grad log pi(x))`` for rows of x, and ``hvp_fn`` of V."""
    mu, A = jnp.asarray(mu), jnp.asarray(A)

    def score_fn(x, key):
        diff = x - mu
        return -0.5 * jnp.sum((diff @ A) * diff, axis=-1), -diff @ A

    def hvp_fn(x, v, key):
        return A @ v

    return score_fn, hvp_fn


def kl_to_target(m, S, mu, A, logdet_sigma):
    """KL(N(m, S) || N(mu, A^-1)); NaN unless S is positive definite."""
    d = m.shape[-1]
    diff = mu - m
    sign, logdet_s = jnp.linalg.slogdet(S)
    kl = 0.5 * (jnp.trace(A @ S) - d + diff @ A @ diff + logdet_sigma - logdet_s)
    return jnp.where(sign > 0, kl, jnp.nan)


def cubature(dim, dtype):
    """The 2d points +- sqrt(d) e_i: mean 0 and second moment I exactly."""
    e = jnp.sqrt(float(dim)) * jnp.eye(dim, dtype=dtype)
    return jnp.concatenate([e, -e])


def kl_path(method: str, variant: str, eta: float, n_steps: int, target, seeds=(0,),
            dtype=jnp.float64):
    """KL after each of ``n_steps`` steps (row 0: the start), one column per seed: (n+1, S)."""
    mu, _, A = target
    score_fn, hvp_fn = oracles(jnp.asarray(mu, dtype), jnp.asarray(A, dtype))
    mu_j, A_j = jnp.asarray(mu, dtype), jnp.asarray(A, dtype)
    logdet_sigma = -jnp.linalg.slogdet(A_j)[1]
    stochastic = variant != "det"
    alpha = ALPHA if variant == "stoch-decay" else CONST_ALPHA
    draws = jnp.zeros((1, DIM), dtype) if stochastic else cubature(DIM, dtype)
    if method == "FB-GVI":
        step = lambda s: fbgvi.step(s, score_fn, hvp_fn, "exact", stochastic)[0]  # noqa: E731
    else:
        step = lambda s: bw_sgd_step(s, score_fn, hvp_fn, "exact", stochastic)  # noqa: E731

    def one(key):
        s0 = fbgvi.init(jnp.zeros(DIM, dtype), jnp.eye(DIM, dtype=dtype) / BETA, eta, alpha, draws,
                        key)

        def body(s, _):
            s = step(s)
            return s, kl_to_target(s.mean, s.cov, mu_j, A_j, logdet_sigma)

        kls = lax.scan(body, s0, None, length=n_steps)[1]
        k0 = kl_to_target(s0.mean, s0.cov, mu_j, A_j, logdet_sigma)
        return jnp.concatenate([k0[None], kls])

    keys = jnp.stack([jax.random.key_data(jax.random.key(1000 + s)) for s in seeds])
    out = jax.jit(jax.vmap(lambda kd: one(jax.random.wrap_key_data(kd))))(keys)
    out = np.asarray(out).T                                  # (n + 1, S)
    # once a covariance lost positive definiteness it stays "diverged" (the notebook keeps the
    # last value instead)
    bad = ~np.isfinite(out)
    return np.where(np.maximum.accumulate(bad, axis=0), np.nan, out)


def predicted_plateau(eta, A):
    """Stationary mean KL of the constant-step stochastic iteration on this Gaussian: the
    covariance converges exactly (the Hessian is exact), the mean error per eigen-direction a
    has variance eta / (2 - eta a) (AR(1) with factor 1 - eta a and noise eta^2 a^2 / a), so
    E KL = sum_a a eta / (2 (2 - eta a))."""
    a = np.linalg.eigvalsh(A)
    return float(np.sum(a * eta / (2.0 * (2.0 - eta * a))))


def predicted_bias(eta, A):
    """KL of FB-GVI's fixed point on this Gaussian. Per eigen-direction a with x = eta a < 1 the
    fixed point is the exact variance 1/a; for 1 < x < 2 the forward map I - eta A flips that
    direction and the backward step's root is s = eta / (2 - x) = r / a with r = x / (2 - x) > 1
    (the fixed points of s = JKO((1 - x)^2 s) solve x (2 - x) s^2 - 2 eta s + eta^2 = 0, roots
    1/a and eta / (2 - x), and the JKO step takes the larger): KL = sum 0.5 (r - 1 - log r)."""
    x = eta * np.linalg.eigvalsh(A)
    r = np.where(x > 1, x / (2.0 - x), 1.0)
    return float(np.sum(0.5 * (r - 1.0 - np.log(r))))


# ------------------------------------------------------------ fbgvi_notebook.py
NOTEBOOK_D, NOTEBOOK_N = 10, 20
NOTEBOOK_EVAL_DRAWS = 1000
NOTEBOOK_CHECKPOINTS = 80


def notebook_logistic_data():
    """(seed, X, y): the first data seed whose 20 x 10 logistic data are not separable."""
    from scipy.optimize import linprog

    for seed in range(100):
        rng = np.random.default_rng(seed)
        theta = rng.standard_normal(NOTEBOOK_D)
        X = rng.standard_normal((NOTEBOOK_N, NOTEBOOK_D))
        X = X / np.sqrt(np.max(np.linalg.eigvalsh(X.T @ X)))
        y = (rng.random(NOTEBOOK_N) < 1 / (1 + np.exp(-X @ theta))).astype(float)
        # separable iff some w has (2y - 1) x_i . w >= 1 for all i (an LP feasibility problem)
        A = -((2 * y - 1)[:, None] * X)
        feasible = linprog(np.zeros(NOTEBOOK_D), A_ub=A, b_ub=-np.ones(NOTEBOOK_N),
                           bounds=[(None, None)] * NOTEBOOK_D).status == 0
        if not feasible:
            return seed, jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)
    raise RuntimeError("no non-separable dataset in 100 seeds")


def notebook_potential(theta, X, y):
    z = X @ theta
    return jnp.sum(jnp.logaddexp(0.0, z) - y * z)


def notebook_runner(X, y):
    """``run(method, eta, iters, seed) -> F`` at NOTEBOOK_CHECKPOINTS times (jit-able), and
    ``objective``."""
    V = lambda th: notebook_potential(th, X, y)  # noqa: E731
    grad_v = jax.grad(V)

    def score_fn(x, key=None):
        return -jax.vmap(V)(x), -jax.vmap(grad_v)(x)

    def hvp_fn(x, v, key=None):
        return jax.jvp(grad_v, (x,), (v,))[1]

    def objective(m, S, key):
        # F(q) = E_q[V] - H(q); NaN if S is not positive definite (a failed run)
        C = jnp.linalg.cholesky(0.5 * (S + S.T))
        th = m + jax.random.normal(key, (NOTEBOOK_EVAL_DRAWS, NOTEBOOK_D)) @ C.T
        entropy = jnp.sum(jnp.log(jnp.diag(C))) + 0.5 * NOTEBOOK_D * (1 + jnp.log(2 * jnp.pi))
        return jnp.mean(jax.vmap(V)(th)) - entropy

    def run(method, eta, iters, seed):
        state = fbgvi.init(jnp.zeros(NOTEBOOK_D), jnp.eye(NOTEBOOK_D), eta, 1e-30,
                           jnp.zeros((1, NOTEBOOK_D)), jax.random.key(seed))
        if method == "FB-GVI":
            step = lambda s: fbgvi.step(s, score_fn, hvp_fn, "exact", True)[0]  # noqa: E731
        else:
            step = lambda s: bw_sgd_step(s, score_fn, hvp_fn, "exact", True)  # noqa: E731
        every = max(1, iters // NOTEBOOK_CHECKPOINTS)

        def chunk(s, _):
            s = lax.fori_loop(0, every, lambda _, q: step(q), s)
            return s, objective(s.mean, s.cov, jax.random.fold_in(s.rng_key, 17))

        _, F = lax.scan(chunk, state, None, length=iters // every)
        F0 = objective(jnp.zeros(NOTEBOOK_D), jnp.eye(NOTEBOOK_D), jax.random.key(99))
        return jnp.concatenate([F0[None], F])

    return run, objective, V, grad_v, score_fn, hvp_fn


# ------------------------------------------------------------ svng_conditioning.py
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


# ------------------------------------------------------------ mixflow_targets.py
def _flat2():
    return numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (2,)))


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


# the authors' leapfrog counts L (their code's settings per target); the banana is in
# tests/engines/test_mixflow.py itself
TARGETS = {
    "cross": (cross, cross_exact, 60),
    "funnel": (funnel, funnel_exact, 80),
    "warped_gaussian": (warped_gaussian, warped_gaussian_exact, 80),
}


def _as_matrix(samples: dict) -> np.ndarray:
    if "x" in samples:
        return np.asarray(samples["x"])
    return np.stack([np.asarray(samples["x1"]), np.asarray(samples["x2"])], 1)


def run_target(name, draws, flow_length, seed=0, reference_steps=5000):
    model, exact, num_leapfrog = TARGETS[name]
    rng = np.random.default_rng(seed)
    truth, other = exact(rng, draws), exact(rng, draws)
    key = jax.random.key(seed)

    t = time.perf_counter()
    res = gf.MixFlow(model, flow_length=flow_length, num_leapfrog=num_leapfrog,
                     num_draws=draws).run(key, reference_steps, progress_bar=False)
    x_mf = _as_matrix(res.get_samples())
    mf_s = time.perf_counter() - t

    t = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_warmup=1000, num_samples=draws, progress_bar=False)
    mcmc.run(jax.random.fold_in(key, 1))
    x_nuts = _as_matrix(mcmc.get_samples())
    nuts_s = time.perf_counter() - t

    ed = lambda x: energy_distance(x, truth, scale_by="y")  # noqa: E731
    s = res.stats
    return {
        "target": name, "L": num_leapfrog, "N": flow_length, "step": s["step_size"],
        "ed_mixflow": ed(x_mf), "ed_nuts": ed(x_nuts), "ed_exact": ed(other),
        "elbo": s["elbo"], "elbo_se": s["elbo_se"], "ref_elbo": s["reference_elbo"],
        "ref_elbo_se": s["reference_elbo_se"], "inv_err": s["inversion_error"],
        "mixflow_s": mf_s, "nuts_s": nuts_s,
    }


# ------------------------------------------------------------ small engines on toy models
def gaussian2():
    numpyro.sample("x", dist.Normal(jnp.array([0.5, -1.0]), jnp.array([1.0, 2.0])).to_event(1))


def simplex3():
    numpyro.sample("p", dist.Dirichlet(jnp.array([2.0, 3.0, 4.0])))


def one_d():
    numpyro.sample("x", dist.Normal(0.3, 0.8))


#: every engine, small settings, on a tiny model: name -> () -> (engine, model)
SMALL_ENGINES = {
    "SVGD": lambda: (gf.SVGD(gaussian2, num_particles=8), gaussian2),
    "CoinSVGD": lambda: (gf.CoinSVGD(gaussian2, num_particles=8), gaussian2),
    "KSDD": lambda: (gf.KSDD(gaussian2, num_particles=8, step_size=0.1), gaussian2),
    "CoinKSDD": lambda: (gf.CoinKSDD(gaussian2, num_particles=8), gaussian2),
    "CoinLAWGD": lambda: (gf.CoinLAWGD(one_d, num_particles=8, grid_size=64, num_eigen=10), one_d),
    "MSVGD": lambda: (gf.MSVGD(simplex3, num_particles=8), simplex3),
    "CoinMSVGD": lambda: (gf.CoinMSVGD(simplex3, num_particles=8), simplex3),
    "SVMD": lambda: (gf.SVMD(simplex3, num_particles=8), simplex3),
    "SVNG": lambda: (gf.SVNG(gaussian2, num_particles=8), gaussian2),
    "IsoGaussianMixtureVI": lambda: (gf.IsoGaussianMixtureVI(gaussian2, num_components=3,
                                                             map_steps=5), gaussian2),
    "FBGVI": lambda: (gf.FBGVI(gaussian2, map_steps=5), gaussian2),
    "FBGVI-stochastic": lambda: (gf.FBGVI(gaussian2, stochastic=True, map_steps=5), gaussian2),
    "MixFlow": lambda: (gf.MixFlow(gaussian2, flow_length=5, num_leapfrog=2, step_size=0.1,
                                   num_draws=4), gaussian2),
}
