"""Shared numerics of the cores: Hessian-vector products, curvature, MAP climbs, Laplace.

Pure JAX (no NumPyro): every function takes a log density ``log_p`` mapping a flat (d,) point
to a scalar. Used by the engines that set step sizes or start covariances from curvature
(IsoGaussianMixtureVI, FBGVI) and by MixFlow's full-rank reference.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

__all__ = [
    "NEWTON_STEPS",
    "climb",
    "curvature",
    "floored_curvature",
    "gaussian_log_density",
    "hessian",
    "hvp",
    "laplace",
    "lower_factor",
    "smallest_curvature",
]

#: Newton steps that finish `laplace`'s mode search
NEWTON_STEPS = 20


def climb(log_p, z, num_steps, learning_rate=0.05):
    """Adam ascent of ``log_p`` from each row of ``z`` (n, d): one MAP search per point."""

    opt = optax.adam(learning_rate)
    grad = jax.vmap(jax.grad(lambda x: -log_p(x)))

    def body(carry, _):
        z, state = carry
        updates, state = opt.update(grad(z), state, z)
        return (optax.apply_updates(z, updates), state), None

    (z, _), _ = jax.lax.scan(body, (z, opt.init(z)), None, length=num_steps)
    return z


def hvp(log_p, x, v):
    """``-grad^2 log p(x) v``: a Hessian-vector product of the potential (forward over
    reverse), at the cost of about two gradients."""
    return jax.jvp(jax.grad(lambda y: -log_p(y)), (x,), (v,))[1]


def hessian(log_p, x):
    """Dense Hessian of -log p at x from d Hessian-vector products (forward over reverse)."""
    return jax.vmap(lambda v: hvp(log_p, x, v))(jnp.eye(x.shape[0], dtype=x.dtype))


def floored_curvature(log_p, x):
    """Eigen-decomposition ``(lam, vec)`` of the Hessian of -log p at x with each eigenvalue
    replaced by its absolute value, floored at 1e-6 of the largest: a valid precision matrix
    ``vec diag(lam) vec^T`` also where log p is not concave (its H^{-1/2} whitens)."""
    h = hessian(log_p, x)
    lam, vec = jnp.linalg.eigh(0.5 * (h + h.T))
    return jnp.maximum(jnp.abs(lam), 1e-6 * jnp.max(jnp.abs(lam)) + 1e-30), vec


def curvature(log_p, z, rng_key, iterations: int = 30):
    """Per point: tr(-grad^2 log p) (Hutchinson-free: exact via d HVPs would cost d; we use the
    diagonal by forward-over-reverse on basis vectors for d <= 200, else 20 Rademacher probes)
    and the largest eigenvalue by power iteration."""
    d = z.shape[1]

    def one(x, key):
        if d <= 200:
            tr = jnp.sum(jax.vmap(lambda e: e @ hvp(log_p, x, e))(jnp.eye(d, dtype=x.dtype)))
        else:
            probes = jax.random.rademacher(key, (20, d), x.dtype)
            tr = jnp.mean(jax.vmap(lambda v: v @ hvp(log_p, x, v))(probes))
        v = jax.random.normal(jax.random.fold_in(key, 1), (d,), x.dtype)

        def power(v, _):
            w = hvp(log_p, x, v)
            return w / (jnp.linalg.norm(w) + 1e-30), None

        v, _ = jax.lax.scan(power, v / jnp.linalg.norm(v), None, length=iterations)
        top = jnp.abs(v @ hvp(log_p, x, v))
        return tr, top

    return jax.vmap(one)(z, jax.random.split(rng_key, z.shape[0]))


def smallest_curvature(log_p, x, top, rng_key, iterations: int = 100):
    """Smallest eigenvalue of ``-grad^2 log p(x)`` by power iteration on ``top I - H``."""
    v = jax.random.normal(rng_key, x.shape, x.dtype)

    def power(v, _):
        w = top * v - hvp(log_p, x, v)
        return w / (jnp.linalg.norm(w) + 1e-30), None

    v, _ = jax.lax.scan(power, v / jnp.linalg.norm(v), None, length=iterations)
    return v @ hvp(log_p, x, v)


def laplace(log_p: Callable, x, map_steps: int, newton_steps: int = NEWTON_STEPS):
    """Mode and inverse-Hessian square root of ``log_p``: ``map_steps`` Adam steps from ``x``,
    then Newton steps with a crude line search (the best of the step halved up to 9 times, or
    none): Adam alone stalls short of the mode on ill-conditioned posteriors. Curvatures are
    floored (`floored_curvature`), so the result is a valid Gaussian on non-log-concave
    targets too."""
    if map_steps:
        x = climb(log_p, x[None], map_steps)[0]

    def newton(_, x):
        # the Newton step scaled by 1, 1/2, .. 1/2^9 or 0: whichever point is highest
        lam, vec = floored_curvature(log_p, x)
        direction = vec @ ((vec.T @ jax.grad(log_p)(x)) / lam)
        t = jnp.concatenate([0.5 ** jnp.arange(10.0), jnp.zeros(1)]).astype(x.dtype)
        # t = 0 is x itself even where the direction is not finite
        points = x + jnp.where(t[:, None] > 0, t[:, None] * direction, 0.0)
        values = jax.vmap(log_p)(points)
        return points[jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf))]

    x = lax.fori_loop(0, newton_steps, newton, x)
    lam, vec = floored_curvature(log_p, x)
    return x, (vec * lam ** -0.5) @ vec.T


def lower_factor(a):
    """Lower-triangular L with positive diagonal and L L^T = a a^T, by QR of a^T (no Cholesky of
    the product, which squares the condition number: float32 fails near 1e7)."""
    _, r = jnp.linalg.qr(a.T)
    sign = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(a.dtype)
    return (r * sign[:, None]).T


def gaussian_log_density(x, loc, scale_tril):
    """``log N(x; loc, L L^T)`` for a lower-triangular ``L`` with positive diagonal; ``x``
    (..., d)."""
    d = loc.shape[-1]
    y = jax.scipy.linalg.solve_triangular(scale_tril, (x - loc).T, lower=True).T
    return (-0.5 * jnp.sum(y**2, -1) - jnp.sum(jnp.log(jnp.diagonal(scale_tril)))
            - 0.5 * d * jnp.log(2 * jnp.pi))
