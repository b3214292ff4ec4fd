"""Kernel Stein discrepancy descent: the pure functional core.

Korba, Aubin-Frankowski, Majewski & Ablin, "Kernel Stein Discrepancy Descent" (ICML 2021).
The particles ``x`` (n, d) descend the squared KSD of their own empirical measure,

    F(x) = (1/n^2) sum_ij k_p(x_i, x_j),
    k_p(x, y) = s(x).s(y) k(x, y) + s(x).grad_y k + s(y).grad_x k + tr grad_x grad_y k,

with ``s = grad log p``. ``grad_x F`` involves ``grad s = Hessian of log p``: we get it by
reverse-mode autodiff through the score (JAX differentiates ``score_fn``), which costs about one
Hessian-vector product per particle per step -- no d x d Hessian is formed, so it scales like
a few gradient evaluations. The kernel scale ``h`` (fixed for the engines' default IMQ kernel;
recomputed each step for a median-heuristic kernel) is held fixed inside each step's
differentiation.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from numpyro_gflow.core.kernels import Kernel, bandwidth, stein_kernel_mean

__all__ = [
    "KSDDState",
    "KSDDInfo",
    "init",
    "step",
    "ksd_squared",
]


class KSDDState(NamedTuple):
    particles: jax.Array
    opt_state: optax.OptState
    rng_key: jax.Array


class KSDDInfo(NamedTuple):
    ksd_sq: jax.Array           # the objective F(x) at the start of the step
    grad_sq_norm: jax.Array     # mean_i |grad_{x_i} F|^2
    bandwidth: jax.Array
    mean_log_density: jax.Array


def ksd_squared(x, score_fn: Callable, kernel: Kernel, rng_key=None, h=None):
    """``F(x)`` and aux ``(log_density, h)``; differentiable in ``x`` through the score. The
    kernel scale ``h`` is the kernel's at ``x`` (held fixed under differentiation) unless
    given."""
    log_density, score = score_fn(x, rng_key)
    h = lax.stop_gradient(bandwidth(kernel, x) if h is None else h)
    # row-blocked above the kernel's block size: memory O(block * n), gradient included
    return stein_kernel_mean(kernel, x, score, h), (log_density, h)


def init(particles, optimizer: optax.GradientTransformation, rng_key) -> KSDDState:
    return KSDDState(particles, optimizer.init(particles), rng_key)


def step(state: KSDDState, score_fn: Callable, kernel: Kernel,
         optimizer: optax.GradientTransformation) -> tuple[KSDDState, KSDDInfo]:
    rng_key, batch_key = jax.random.split(state.rng_key)
    (value, (log_density, h)), grad = jax.value_and_grad(ksd_squared, has_aux=True)(
        state.particles, score_fn, kernel, batch_key)
    # plain gradient of F, as in the paper (its step sizes refer to it); grad_{x_i} F = O(1/n)
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        # a line search (optax.lbfgs, the paper's L-BFGS) evaluates F itself: same batch,
        # same kernel scale as this step's gradient
        def value_fn(x):
            return ksd_squared(x, score_fn, kernel, batch_key, h)[0]

        updates, opt_state = optimizer.update(grad, state.opt_state, state.particles,
                                              value=value, grad=grad, value_fn=value_fn)
    else:
        updates, opt_state = optimizer.update(grad, state.opt_state, state.particles)
    particles = optax.apply_updates(state.particles, updates)
    info = KSDDInfo(value, jnp.mean(jnp.sum(grad**2, -1)), h, jnp.mean(log_density))
    return KSDDState(particles, opt_state, rng_key), info
