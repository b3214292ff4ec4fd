"""Thirteen posteriors from posteriordb as NumPyro models, with their data and reference draws.

posteriordb (Magnusson, Bürkner, Vehtari et al., "posteriordb: testing, benchmarking and
developing Bayesian inference algorithms", 2023; BSD-3 licence) is the benchmark set that Stan's
Pathfinder paper (Zhang, Carpenter, Gelman & Vehtari, JMLR 2022) compared variational methods on.
Its Stan models are the specification; the NumPyro models here are our translations (same
parameters, constraints and log density up to a constant), each checked by NUTS against the
reference draws (``tests/shell/test_posteriordb.py``, slow). Data and reference draws are
posteriordb's, shipped beside this module (``data/``; see ``README.md`` there for the citation,
licence and what was changed: reference draws stored as float32).

Example:
    >>> from numpyro_gflow.datasets import posteriordb
    >>> post = posteriordb.load("kidiq-kidscore_interaction")
    >>> post.dimension, sorted(post.reference)[:2]
    (5, ['beta[1]', 'beta[2]'])
    >>> # gf.FBGVI(post.model).run(key, 1000, *post.args, **post.kwargs)

`Posterior.flatten(samples)` turns NumPyro samples (site -> array) into the reference's scalar
names (``beta[1]`` is ``samples["beta"][..., 0]``), so any engine's draws compare directly.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

__all__ = [
    "NAMES",
    "Posterior",
    "load",
    "rk4",
]

#: bound for ODE solutions at parameter values far outside the posterior (see `_safe_log`)
_BIG = 1e10
_FLAT = dist.ImproperUniform(constraints.real, (), ())
_FLAT_POSITIVE = dist.ImproperUniform(constraints.positive, (), ())


def _flat(shape=()):
    return dist.ImproperUniform(constraints.real, (), tuple(shape))


# ----------------------------------------------------------------------------- ODE solver
def rk4(f: Callable, y0, times, args, substeps: int):
    """Classical fourth-order Runge-Kutta from ``t = 0`` through ``times`` (increasing, > 0),
    ``substeps`` equal steps between consecutive output times: ``(len(times), *y0.shape)``.

    Fixed steps keep the cost and the gradient (reverse mode through the scan) the same for
    every parameter value, which batched particles need; the step counts below keep the global
    error under 1e-5 relative on the posteriors' mass (checked against a 4x finer grid)."""
    times = jnp.asarray(times)
    starts = jnp.concatenate([jnp.zeros(1, times.dtype), times[:-1]])

    def interval(y, t0t1):
        t0, t1 = t0t1
        h = (t1 - t0) / substeps

        def step(carry, i):
            y = carry
            t = t0 + i * h
            k1 = f(t, y, args)
            k2 = f(t + h / 2, y + h / 2 * k1, args)
            k3 = f(t + h / 2, y + h / 2 * k2, args)
            k4 = f(t + h, y + h * k3, args)
            return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

        y, _ = jax.lax.scan(step, y, jnp.arange(substeps))
        return y, y

    _, ys = jax.lax.scan(interval, jnp.asarray(y0), (starts, times))
    return ys


# ----------------------------------------------------------------------------- the models
def ark(K, y):
    """AR(K): ``y[t] ~ N(alpha + sum_k beta[k] y[t-k], sigma)`` for t > K."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    T = y.shape[0]
    lags = jnp.stack([y[K - k - 1:T - k - 1] for k in range(K)], axis=-1)   # (T - K, K)
    with numpyro.plate("time", T - K):
        numpyro.sample("y", dist.Normal(alpha + lags @ beta, sigma), obs=y[K:])


def arma11(y):
    """ARMA(1, 1) with the first error taken as ``err[0] = 0``."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    phi = numpyro.sample("phi", dist.Normal(0.0, 2.0))
    theta = numpyro.sample("theta", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    nu1 = mu + phi * mu

    def step(err_prev, y_pair):
        y_prev, y_t = y_pair
        nu = mu + phi * y_prev + theta * err_prev
        return y_t - nu, nu

    _, nus = jax.lax.scan(step, y[0] - nu1, (y[:-1], y[1:]))
    nu = jnp.concatenate([jnp.reshape(nu1, (1,)), nus])
    # an explosive draw (|theta| > ~1.2) overflows float32 within 200 steps (inf, then NaN):
    # its log density is -inf, as Stan's would be (a rejected point, never a finite plateau
    # that initialisation would accept); the likelihood's location stays finite so NumPyro's
    # checks pass. Where the posterior has its mass (|theta| < 0.3) nothing changes.
    finite = jnp.all(jnp.isfinite(nu))
    numpyro.factor("explosive", jnp.where(finite, 0.0, -jnp.inf))
    # err = y - nu is a unit-Jacobian (triangular) map of y: err ~ N(0, sigma) <=> y ~ N(nu, sigma)
    with numpyro.plate("time", y.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.where(finite, nu, 0.0), sigma), obs=y)


def hmm_drive(K, u, v, alpha):
    """Two-state hidden Markov model of basketball drives, the states summed out by the forward
    algorithm; exponential emissions with positive-ordered rates ``phi``, ``lambda``."""
    theta1 = numpyro.sample("theta1", dist.Dirichlet(alpha[0]))
    theta2 = numpyro.sample("theta2", dist.Dirichlet(alpha[1]))
    order = dist.ImproperUniform(constraints.positive_ordered_vector, (), (K,))
    phi = numpyro.sample("phi", order)
    lam = numpyro.sample("lambda", order)
    prior_loc = jnp.array([0.0, 3.0])
    numpyro.factor("ordered_prior", dist.Normal(prior_loc, 1.0).log_prob(phi).sum()
                   + dist.Normal(prior_loc, 1.0).log_prob(lam).sum())
    log_trans = jnp.log(jnp.stack([theta1, theta2]))                       # [from j, to k]
    emit = (dist.Exponential(phi).log_prob(u[:, None])
            + dist.Exponential(lam).log_prob(v[:, None]))                  # (N, K)

    def forward(gamma, e):
        return jax.nn.logsumexp(gamma[:, None] + log_trans, axis=0) + e, None

    gamma, _ = jax.lax.scan(forward, emit[0], emit[1:])
    numpyro.factor("log_lik", jax.nn.logsumexp(gamma))


def logearn_interaction(log_earn, height, male):
    """``log(earn) ~ N(b1 + b2 height + b3 male + b4 height male, sigma)``, flat priors."""
    beta = numpyro.sample("beta", _flat([4]))
    sigma = numpyro.sample("sigma", _FLAT_POSITIVE)
    mean = beta[0] + beta[1] * height + beta[2] * male + beta[3] * height * male
    with numpyro.plate("data", log_earn.shape[0]):
        numpyro.sample("log_earn", dist.Normal(mean, sigma), obs=log_earn)


def eight_schools_noncentered(y, sigma):
    """Non-centred eight schools (Rubin 1981): ``theta = mu + tau theta_trans``."""
    J = y.shape[0]
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([J]).to_event(1))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.deterministic("theta", theta_trans * tau + mu)
    with numpyro.plate("schools", J):
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def garch11(y, sigma1):
    """GARCH(1, 1) with ``alpha1 + beta1 < 1`` (flat priors on the constrained parameters).

    Stan's ``beta1`` lives in ``(0, 1 - alpha1)`` with a flat density; here it is
    ``beta1 = (1 - alpha1) beta1_raw`` with ``beta1_raw`` in (0, 1), and the Jacobian
    ``log(1 - alpha1)`` makes the density flat in ``(alpha1, beta1)`` again."""
    mu = numpyro.sample("mu", _FLAT)
    alpha0 = numpyro.sample("alpha0", _FLAT_POSITIVE)
    alpha1 = numpyro.sample("alpha1", dist.Uniform(0.0, 1.0))
    beta1_raw = numpyro.sample("beta1_raw", dist.Uniform(0.0, 1.0))
    beta1 = numpyro.deterministic("beta1", (1.0 - alpha1) * beta1_raw)
    numpyro.factor("beta1_jacobian", jnp.log1p(-alpha1))

    def step(sigma_prev, y_prev):
        s = jnp.sqrt(alpha0 + alpha1 * jnp.square(y_prev - mu) + beta1 * jnp.square(sigma_prev))
        return s, s

    _, rest = jax.lax.scan(step, jnp.asarray(sigma1, y.dtype), y[:-1])
    scale = jnp.concatenate([jnp.full((1,), sigma1, y.dtype), rest])
    with numpyro.plate("time", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, scale), obs=y)


def gp_regr(x, y):
    """Gaussian-process regression, squared-exponential kernel plus ``sigma`` (not squared) on
    the diagonal, as in the Stan model."""
    rho = numpyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    sq = jnp.square(x[:, None] - x[None, :])
    cov = alpha ** 2 * jnp.exp(-0.5 * sq / rho ** 2) + sigma * jnp.eye(x.shape[0])
    numpyro.sample("y", dist.MultivariateNormal(jnp.zeros(x.shape[0]), cov), obs=y)


def _lotka_volterra_rhs(t, z, theta):
    u, v = z[0], z[1]
    alpha, beta, gamma, delta = theta[0], theta[1], theta[2], theta[3]
    return jnp.stack([(alpha - beta * v) * u, (-gamma + delta * u) * v])


def lotka_volterra(ts, y_init, y):
    """Lotka-Volterra predator-prey ODE on the Hudson's Bay lynx-hare data; log-normal
    measurement errors. The ODE is integrated by `rk4` (20 steps per year)."""
    loc = jnp.array([1.0, 0.05, 1.0, 0.05])
    scale = jnp.array([0.5, 0.05, 0.5, 0.05])
    theta = numpyro.sample("theta", dist.TruncatedNormal(loc, scale, low=0.0).to_event(1))
    z_init = numpyro.sample("z_init", dist.LogNormal(jnp.log(10.0), 1.0).expand([2]).to_event(1))
    sigma = numpyro.sample("sigma", dist.LogNormal(-1.0, 1.0).expand([2]).to_event(1))
    z = numpyro.deterministic("z", rk4(_lotka_volterra_rhs, z_init, ts, theta, substeps=20))
    numpyro.sample("y_init", dist.LogNormal(jnp.log(z_init), sigma).to_event(1), obs=y_init)
    with numpyro.plate("time", ts.shape[0]):
        numpyro.sample("y", dist.LogNormal(_safe_log(z), sigma).to_event(1), obs=y)


def _safe_log(c):
    """log of an ODE solution that is positive in exact arithmetic: an explicit step that
    overshoots below zero or overflows (parameters far from the posterior) gives a finite, very
    low density instead of NaN; inside the posterior's mass the guard never binds."""
    c = jnp.nan_to_num(c, nan=_BIG, posinf=_BIG, neginf=1.0 / _BIG)
    return jnp.log(jnp.clip(c, 1.0 / _BIG, _BIG))


def kidscore_interaction(kid_score, mom_hs, mom_iq):
    """``kid_score ~ N(b1 + b2 mom_hs + b3 mom_iq + b4 mom_hs mom_iq, sigma)``; flat ``beta``,
    half-Cauchy(2.5) ``sigma``."""
    beta = numpyro.sample("beta", _flat([4]))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    mean = beta[0] + beta[1] * mom_hs + beta[2] * mom_iq + beta[3] * mom_hs * mom_iq
    with numpyro.plate("data", kid_score.shape[0]):
        numpyro.sample("kid_score", dist.Normal(mean, sigma), obs=kid_score)


def low_dim_gauss_mix(y):
    """Two-component Gaussian mixture in one dimension, ordered means."""
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.ordered_vector, (), (2,)))
    numpyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum())
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
    theta = numpyro.sample("theta", dist.Beta(5.0, 5.0))
    mixing = dist.Categorical(probs=jnp.stack([theta, 1.0 - theta]))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.MixtureSameFamily(mixing, dist.Normal(mu, sigma)), obs=y)


def logmesquite_logvash(log_weight, features):
    """``log(weight)`` on an intercept and five log-scale/group predictors, flat priors;
    ``features`` (N, 5): log canopy volume, log canopy area, log canopy shape, log total
    height, group."""
    beta = numpyro.sample("beta", _flat([6]))
    sigma = numpyro.sample("sigma", _FLAT_POSITIVE)
    with numpyro.plate("data", log_weight.shape[0]):
        numpyro.sample("log_weight", dist.Normal(beta[0] + features @ beta[1:], sigma),
                       obs=log_weight)


def _one_comp_rhs(t, c, theta):
    k_a, K_m, V_m, D, V = theta
    dose = jnp.where(t > 0, jnp.exp(-k_a * t) * D * k_a / V, 0.0)
    c = jnp.maximum(c, 0.0)      # the exact solution stays >= 0 (dc/dt = dose >= 0 at c = 0)
    return dose - (V_m / V) * c / (K_m + c)


def one_comp_mm_elim_abs(times, C_hat, D, V):
    """One-compartment pharmacokinetics, first-order absorption, Michaelis-Menten elimination;
    the ODE is integrated by `rk4` (50 steps per half day)."""
    k_a = numpyro.sample("k_a", dist.HalfCauchy(1.0))
    K_m = numpyro.sample("K_m", dist.HalfCauchy(1.0))
    V_m = numpyro.sample("V_m", dist.HalfCauchy(1.0))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(1.0))
    c = rk4(_one_comp_rhs, jnp.zeros((), times.dtype), times, (k_a, K_m, V_m, D, V),
            substeps=50)
    c = numpyro.deterministic("C", c)
    with numpyro.plate("time", times.shape[0]):
        numpyro.sample("C_hat", dist.LogNormal(_safe_log(c), sigma), obs=C_hat)


def blr(X, y):
    """Bayesian linear regression: ``beta ~ N(0, 10)``, ``sigma ~ half-N(0, 10)``."""
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


# ----------------------------------------------------------------------------- data -> inputs
def _f(x):
    return jnp.asarray(np.asarray(x, np.float64), jnp.float32)


def _mesquite_inputs(d):
    diam1, diam2 = np.asarray(d["diam1"]), np.asarray(d["diam2"])
    canopy, total = np.asarray(d["canopy_height"]), np.asarray(d["total_height"])
    features = np.stack([np.log(diam1 * diam2 * canopy), np.log(diam1 * diam2),
                         np.log(diam1 / diam2), np.log(total), np.asarray(d["group"])], axis=-1)
    return (), {"log_weight": _f(np.log(d["weight"])), "features": _f(features)}


#: name -> (model, data dict -> (args, kwargs))
_SPECS: dict[str, tuple[Callable, Callable]] = {
    "arK-arK": (ark, lambda d: ((), {"K": int(d["K"]), "y": _f(d["y"])})),
    "arma-arma11": (arma11, lambda d: ((), {"y": _f(d["y"])})),
    "bball_drive_event_0-hmm_drive_0": (hmm_drive, lambda d: ((), {
        "K": int(d["K"]), "u": _f(d["u"]), "v": _f(d["v"]), "alpha": _f(d["alpha"])})),
    "earnings-logearn_interaction": (logearn_interaction, lambda d: ((), {
        "log_earn": _f(np.log(d["earn"])), "height": _f(d["height"]), "male": _f(d["male"])})),
    "eight_schools-eight_schools_noncentered": (eight_schools_noncentered, lambda d: ((), {
        "y": _f(d["y"]), "sigma": _f(d["sigma"])})),
    "garch-garch11": (garch11, lambda d: ((), {"y": _f(d["y"]),
                                               "sigma1": float(d["sigma1"])})),
    "gp_pois_regr-gp_regr": (gp_regr, lambda d: ((), {"x": _f(d["x"]), "y": _f(d["y"])})),
    "hudson_lynx_hare-lotka_volterra": (lotka_volterra, lambda d: ((), {
        "ts": _f(d["ts"]), "y_init": _f(d["y_init"]), "y": _f(d["y"])})),
    "kidiq-kidscore_interaction": (kidscore_interaction, lambda d: ((), {
        "kid_score": _f(d["kid_score"]), "mom_hs": _f(d["mom_hs"]),
        "mom_iq": _f(d["mom_iq"])})),
    "low_dim_gauss_mix-low_dim_gauss_mix": (low_dim_gauss_mix, lambda d: ((), {
        "y": _f(d["y"])})),
    "mesquite-logmesquite_logvash": (logmesquite_logvash, _mesquite_inputs),
    "one_comp_mm_elim_abs-one_comp_mm_elim_abs": (one_comp_mm_elim_abs, lambda d: ((), {
        "times": _f(d["times"]), "C_hat": _f(d["C_hat"]), "D": float(d["D"]),
        "V": float(d["V"])})),
    "sblrc-blr": (blr, lambda d: ((), {"X": _f(d["X"]), "y": _f(d["y"])})),
}

#: the posteriors' names, as posteriordb spells them (``<data>-<model>``)
NAMES: tuple[str, ...] = tuple(sorted(_SPECS))

_INDEXED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\[(\d+(?:,\d+)*)\]$")


class Posterior(NamedTuple):
    """One posteriordb posterior: the NumPyro model, its inputs, the reference draws."""

    name: str
    model: Callable
    args: tuple
    kwargs: dict
    #: scalar parameter name as Stan prints it (``beta[1]``) -> (10000,) reference draws
    #: (10 chains x 1000, float32)
    reference: dict
    #: reference chain index (0-9) of each draw
    chain: np.ndarray
    #: posteriordb's metadata (``info.json``): dimensions, licences, how the reference was made
    info: dict

    @property
    def dimension(self) -> int:
        return len(self.reference)

    def flatten(self, samples: dict) -> dict:
        """NumPyro samples (site -> (n, *shape)) as the reference's scalar names -> (n,)."""
        out = {}
        for key in self.reference:
            m = _INDEXED.match(key)
            if m is None:
                out[key] = np.asarray(samples[key])
            else:
                idx = tuple(int(i) - 1 for i in m.group(2).split(","))
                out[key] = np.asarray(samples[m.group(1)])[(Ellipsis, *idx)]
        return out

    def reference_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(means, sds) of the reference draws, in the order of ``reference``."""
        draws = np.stack([np.asarray(v, np.float64) for v in self.reference.values()])
        return draws.mean(axis=1), draws.std(axis=1, ddof=1)

    def errors(self, samples: dict) -> dict:
        """How far ``samples`` are from the reference: per scalar parameter, the mean error in
        reference sds and the relative sd error; and their maxima over parameters."""
        flat = self.flatten(samples)
        mean, sd = self.reference_moments()
        m = np.array([np.mean(np.asarray(flat[k], np.float64)) for k in self.reference])
        s = np.array([np.std(np.asarray(flat[k], np.float64), ddof=1) for k in self.reference])
        mean_err = np.abs(m - mean) / sd
        sd_err = np.abs(s / sd - 1.0)
        return {"names": list(self.reference), "mean_err": mean_err, "sd_err": sd_err,
                "max_mean_err": float(np.max(mean_err)), "max_sd_err": float(np.max(sd_err))}


@lru_cache(maxsize=None)
def _read(name: str):
    folder = resources.files(__name__).joinpath("data")
    data = json.loads(folder.joinpath(f"{name}.data.json").read_text())
    info = json.loads(folder.joinpath(f"{name}.info.json").read_text())
    with folder.joinpath(f"{name}.reference.npz").open("rb") as f:
        ref = dict(np.load(f))
    return data, info, ref


def load(name: str) -> Posterior:
    """The posterior ``name`` (one of `NAMES`): model, inputs (``model(*args, **kwargs)``),
    reference draws and metadata."""
    if name not in _SPECS:
        raise ValueError(f"unknown posteriordb posterior {name!r}; known: {', '.join(NAMES)}")
    model, inputs = _SPECS[name]
    data, info, ref = _read(name)      # cached: copy before taking it apart
    args, kwargs = inputs(data)
    ref = dict(ref)
    chain = ref.pop("chain").astype(np.int64)
    return Posterior(name, model, args, kwargs, ref, chain, info)
