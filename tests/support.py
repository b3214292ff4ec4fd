"""What the tests share: small engines on toy models, and the experiment set-ups they check.

Tests import nothing from ``benchmarks/``. The posteriors shared with the benchmark suite and
the experiments (logistic regression, eight schools, the diabetes regression and its exact
evidence, the correlated-feature logistic regression, MixFlow's 2-d targets) have one owner,
`numpyro_gflow.datasets.models`, and are re-exported here. Still copied from the experiment
scripts (keep them in step): the FB-GVI experiments' harnesses (the breast-cancer theta model
of ``benchmarks/experiments/fbgvi_curves``, the Gaussian target and KL path of
``.../fbgvi_paper``, the logistic data and runner of ``.../fbgvi_notebook``) and MixFlow's
``run_target`` of ``.../mixflow_targets``. Cached references are in ``tests/data/``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax
from numpyro.infer import MCMC, NUTS

import numpyro_gflow as gf
from numpyro_gflow.core import fbgvi
from numpyro_gflow.datasets.models import (  # noqa: F401  (re-exported to the tests)
    EIGHT_SCHOOLS_SIGMA,
    EIGHT_SCHOOLS_Y,
    breast_cancer_theta_model,
    correlated_logistic_data,
    correlated_logistic_model,
    cross,
    cross_exact,
    diabetes_log_evidence,
    diabetes_regression,
    eight_schools_noncentered,
    funnel,
    funnel_exact,
    logistic_regression,
    warped_gaussian,
    warped_gaussian_exact,
)
from numpyro_gflow.diagnostics import energy_distance


# ------------------------------------------------------------ benchmarks/models.py


# ------------------------------------------------------------ mixflow_realdata.py


# ------------------------------------------------------------ fbgvi_curves.py


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


# ------------------------------------------------------------ mixflow_targets.py


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
                     num_draws=draws, reference="meanfield").run(key, reference_steps,
                                                                 progress_bar=False)
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


_COMPILES: list = []


def _count_compile(event, duration, **kwargs):
    # lowering to an XLA module: every compilation, whether XLA's part then comes from the
    # suite's persistent cache (conftest.py) or not (a backend-compile count would miss a
    # program compiled afresh but found in the cache)
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        _COMPILES.append(duration)


def compilations() -> list:
    """The process's compilations (programs lowered to XLA) since the first call
    (``jax.monitoring``; one listener per process): take ``len()`` before and after what you
    measure."""
    global _REGISTERED
    if not _REGISTERED:
        jax.monitoring.register_event_duration_secs_listener(_count_compile)
        _REGISTERED = True
    return _COMPILES


_REGISTERED = False


def data_digest(*arrays) -> str:
    """A short SHA-256 of arrays' bytes: what a cached reference in tests/data is keyed by (a
    test refuses a reference made for other data)."""
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()[:16]
