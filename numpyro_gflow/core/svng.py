"""Stein variational natural gradient (SVNG): the pure core.

Shi, Liu & Mackey (ICLR 2022): SVMD's adaptive kernel with the mirror map's Hessian replaced
by a metric ``G`` on an unconstrained space,

    phi_k = (1/n^2) sum_m k_half(x_k, x_m) G^{-1}
            sum_l [k_half(x_m, x_l) s(x_l) + grad_{x_l} k_half(x_m, x_l)].

``G`` is fixed, or a running average (rate ``max(decay, 1/t)``) of the particles' mean
observed information made positive definite (negative eigenvalues clipped) plus ``jitter I``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from numpyro_gflow.core.kernels import Kernel, stein_discrepancy
from numpyro_gflow.core.msvgd import MirrorEval
from numpyro_gflow.core.svmd import SVMDInfo, svmd_direction

__all__ = [
    "SVNGState",
    "init",
    "step",
]


class SVNGState(NamedTuple):
    particles: jax.Array        # (n, d) NumPyro unconstrained coordinates
    opt_state: optax.OptState
    metric: jax.Array           # (d, d) running metric G
    count: jax.Array
    rng_key: jax.Array


def _psd(G, floor):
    G = 0.5 * (G + G.T)
    w, Q = jnp.linalg.eigh(G)
    return (Q * jnp.maximum(w, 0.0)) @ Q.T + floor * jnp.eye(G.shape[0], dtype=G.dtype)


def init(particles, metric, optimizer, rng_key) -> SVNGState:
    """``metric``: the starting (or fixed) (d, d) SPD metric."""
    return SVNGState(particles, optimizer.init(particles), metric, jnp.zeros((), jnp.int32),
                     rng_key)


def step(state: SVNGState, score_fn: Callable, hessian_fn: Callable | None, kernel: Kernel,
         optimizer, decay: float, jitter: float, threshold: float = 0.98, with_ksd: bool = False):
    """One SVNG step; ``hessian_fn`` None keeps the metric fixed."""
    rng_key, batch_key = jax.random.split(state.rng_key)
    x = state.particles
    logp, score = score_fn(x, batch_key)
    if hessian_fn is None:      # a fixed, user-given metric
        G = state.metric
    else:                       # running average of the particles' mean observed information
        estimate = _psd(-jnp.mean(hessian_fn(x, batch_key), axis=0), jitter)
        rate = jnp.maximum(decay, 1.0 / (state.count + 1.0))
        G = (1 - rate) * state.metric + rate * estimate
    chol = jnp.linalg.cholesky(G)
    middle = lambda v: jax.scipy.linalg.cho_solve((chol, True), v.T).T  # noqa: E731
    ev = MirrorEval(logp, score, x, (None,))
    phi, h, m = svmd_direction(kernel, ev, ((0, x.shape[1]),), middle, threshold)
    updates, opt_state = optimizer.update(-phi, state.opt_state, x)
    new = SVNGState(optax.apply_updates(x, updates), opt_state, G, state.count + 1, rng_key)
    return new, SVMDInfo(jnp.mean(jnp.sum(phi**2, -1)), h, jnp.mean(logp), m,
                         stein_discrepancy(x, score) if with_ksd else None)
