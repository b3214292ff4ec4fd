"""Mirrored SVGD (MSVGD): the pure core.

Shi, Liu & Mackey, "Sampling with Mirrored Stein Operators" (ICLR 2022). Particles ``eta``
(n, d) live in mirror (dual) coordinates; an ``eval_fn(eta, rng_key) -> MirrorEval`` gives the
dual target's log density and score, the free primal coordinates the kernel acts on, and per
site the Jacobian ``d theta / d eta = grad^2 psi(theta)^{-1}`` (None for identity maps). The
direction is

    phi(eta_j) = (1/n) sum_i [k(th_i, th_j) s(eta_i)
                              + grad^2 psi(th_i)^{-1} grad_{th_i} k(th_i, th_j)]

driven through an optax transformation (AdaGrad, RMSprop, or coin betting for Coin MSVGD).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from numpyro_gflow.core.kernels import Kernel, kernel_matrix, stein_discrepancy

__all__ = [
    "MSVGDInfo",
    "MSVGDState",
    "MirrorEval",
    "init",
    "mirrored_direction",
    "step",
]


class MirrorEval(NamedTuple):
    log_density: jax.Array   # (n,) dual log density
    score: jax.Array         # (n, d) grad_eta log p_H
    primal: jax.Array        # (n, d) free primal coordinates theta (the kernel's input)
    jacobians: tuple         # per site: (n, k, k) d theta / d eta, or None for identity maps


class MSVGDState(NamedTuple):
    particles: jax.Array        # (n, d) dual coordinates eta
    opt_state: optax.OptState
    rng_key: jax.Array


class MSVGDInfo(NamedTuple):
    stein_sq_norm: jax.Array
    bandwidth: jax.Array
    mean_log_density: jax.Array   # of the dual target
    ksd: jax.Array | None = None  # IMQ KSD against the dual target (``with_ksd=True`` only)


def mirrored_direction(kernel: Kernel, ev: MirrorEval, slices: tuple):
    """``(1/n) sum_i [k(th_i, th_j) s(eta_i) + grad^2 psi(th_i)^{-1} grad_{th_i} k(th_i, th_j)]``.

    The kernel acts on the primal (free) coordinates; ``grad^2 psi^{-1} = d theta / d eta``
    per site. O(n^2 d + n^2 k^2) for site blocks of size k.
    """
    theta = ev.primal
    n = theta.shape[0]
    K, dK, h = kernel_matrix(kernel, theta)
    drive = K @ ev.score
    blocks = []
    for (lo, hi), J in zip(slices, ev.jacobians):
        th = theta[:, lo:hi]
        if J is None:   # identity map: the SVGD repulsion
            blocks.append(dK @ th - jnp.sum(dK, 1, keepdims=True) * th)
        else:
            # sum_i dK_ij J_i (th_i - th_j) = dK^T (J th) - (sum_i dK_ij J_i) th_j
            j_theta = jnp.einsum("iab,ib->ia", J, th)
            mixed = jnp.einsum("ij,iab->jab", dK, J)
            blocks.append(dK.T @ j_theta - jnp.einsum("jab,jb->ja", mixed, th))
    repulse = (2.0 / h) * jnp.concatenate(blocks, axis=1)
    return (drive + repulse) / n, h


def init(particles, optimizer, rng_key) -> MSVGDState:
    return MSVGDState(particles, optimizer.init(particles), rng_key)


def step(state: MSVGDState, eval_fn: Callable, slices: tuple, kernel: Kernel,
         optimizer, with_ksd: bool = False) -> tuple[MSVGDState, MSVGDInfo]:
    rng_key, batch_key = jax.random.split(state.rng_key)
    ev = eval_fn(state.particles, batch_key)
    phi, h = mirrored_direction(kernel, ev, slices)
    updates, opt_state = optimizer.update(-phi, state.opt_state, state.particles)
    particles = optax.apply_updates(state.particles, updates)
    info = MSVGDInfo(jnp.mean(jnp.sum(phi**2, -1)), h, jnp.mean(ev.log_density),
                     stein_discrepancy(state.particles, ev.score) if with_ksd else None)
    return MSVGDState(particles, opt_state, rng_key), info
