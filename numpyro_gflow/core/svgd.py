"""Stein variational gradient descent: the pure functional core.

Liu & Wang, "Stein Variational Gradient Descent: A General Purpose Bayesian Inference
Algorithm" (NeurIPS 2016). Particles ``x`` (n, d) move along the SVGD direction

    phi(x_i) = (1/n) sum_j [k(x_j, x_i) grad log p(x_j) + grad_{x_j} k(x_j, x_i)]

through an optax transformation (plain step ``x += eps * phi`` with ``optax.sgd``; the reference
code's AdaGrad by default). ``init``/``step`` are pure and jit-able; ``score_fn(x, rng_key)``
returns ``(log_density (n,), score (n, d))`` and may be stochastic (mini-batches).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from numpyro_gflow.core.kernels import Kernel, stein_discrepancy, svgd_direction

__all__ = [
    "SVGDInfo",
    "SVGDState",
    "init",
    "step",
]


class SVGDState(NamedTuple):
    particles: jax.Array        # (n, d), unconstrained
    opt_state: optax.OptState
    rng_key: jax.Array


class SVGDInfo(NamedTuple):
    stein_sq_norm: jax.Array    # mean_i |phi(x_i)|^2: the squared Stein direction norm
    bandwidth: jax.Array        # kernel scale h used at this step
    mean_log_density: jax.Array
    #: IMQ kernel Stein discrepancy of the particles before the step (O(n^2 d): only with
    #: ``with_ksd=True``, else None and left out of the trace)
    ksd: jax.Array | None = None


def init(particles: jax.Array, optimizer: optax.GradientTransformation, rng_key) -> SVGDState:
    return SVGDState(particles, optimizer.init(particles), rng_key)


def step(state: SVGDState, score_fn: Callable, kernel: Kernel,
         optimizer: optax.GradientTransformation,
         with_ksd: bool = False) -> tuple[SVGDState, SVGDInfo]:
    rng_key, batch_key = jax.random.split(state.rng_key)
    log_density, score = score_fn(state.particles, batch_key)
    phi, h = svgd_direction(kernel, state.particles, score)
    updates, opt_state = optimizer.update(-phi, state.opt_state, state.particles)
    particles = optax.apply_updates(state.particles, updates)
    info = SVGDInfo(jnp.mean(jnp.sum(phi**2, axis=-1)), h, jnp.mean(log_density),
                    stein_discrepancy(state.particles, score) if with_ksd else None)
    return SVGDState(particles, opt_state, rng_key), info
