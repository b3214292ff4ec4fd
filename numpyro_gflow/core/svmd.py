"""Stein variational mirror descent (SVMD): the pure core.

Shi, Liu & Mackey, "Sampling with Mirrored Stein Operators" (ICLR 2022), with the paper's
adaptive kernel ``K_psi(th, th') = E_z[k_half(th, z) grad^2 psi(z) k_half(z, th')]``, where
``k_half`` is the Nystrom square root of the base kernel over the particles. Same state and
``eval_fn`` as `numpyro_gflow.core.msvgd`. `svmd_direction` is shared with SVNG, which puts
a metric where SVMD has ``grad^2 psi``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from numpyro_gflow.core.kernels import Kernel, kernel_matrix, stein_discrepancy
from numpyro_gflow.core.msvgd import MirrorEval, MSVGDState, solve_blocks

__all__ = [
    "SVMDInfo",
    "apply_hessian_psi",
    "sqrt_kernel",
    "step",
    "svmd_direction",
]


def sqrt_kernel(kernel: Kernel, theta, threshold: float = 0.98, jitter: float = 1e-5):
    """The kernel's square root w.r.t. the particles' empirical measure, by Nystrom.

    Gram ``K + jitter I = V diag(lam) V^T``; eigenfunctions ``u_j(x) = sqrt(n)/lam_j sum_i
    k(x, th_i) V_ij`` with operator eigenvalues ``mu_j = lam_j / n``; ``k_half(x, y) = sum_j
    sqrt(mu_j) u_j(x) u_j(y)`` over the top eigenpairs holding ``threshold`` of the spectrum
    (the paper's 0.98). Returns ``k_half`` at all particle pairs (n, n) and
    ``grad_{th_l} k_half(th_m, th_l)`` as (m, l, d).
    """
    n = theta.shape[0]
    K, dK, h = kernel_matrix(kernel, theta)
    lam, V = jnp.linalg.eigh(K + jitter * jnp.eye(n, dtype=K.dtype))
    lam_desc = lam[::-1]
    cum = jnp.cumsum(lam_desc) / jnp.sum(lam_desc)
    keep_desc = jnp.concatenate([jnp.ones(1, bool), cum[:-1] < threshold])
    keep = keep_desc[::-1]
    lam_safe = jnp.where(keep, lam, 1.0)
    coef = jnp.where(keep, jnp.sqrt(lam_safe / n), 0.0)           # sqrt(mu_j), 0 if dropped
    U = jnp.sqrt(n) * V                                              # u_j at the particles
    k_half = (U * coef) @ U.T
    # grad u_j(th_l) = sqrt(n)/lam_j sum_i (2/h) f'_li (th_l - th_i) V_ij
    # (shaped as plain matrix products: XLA's CPU einsum over three operands is ~50x slower)
    d = theta.shape[1]
    A = dK @ V                                                       # (l, j)
    B = (dK @ (V[:, :, None] * theta[:, None, :]).reshape(n, -1)).reshape(n, n, d)  # (l, j, d)
    grad_u = ((2.0 / h) * jnp.sqrt(n) / lam_safe[None, :, None]
              * (theta[:, None, :] * A[..., None] - B))
    grad_k_half = ((U * coef) @ jnp.swapaxes(grad_u, 0, 1).reshape(n, -1)).reshape(n, n, d)
    return k_half, grad_k_half, h, jnp.sum(keep)


def svmd_direction(kernel: Kernel, ev: MirrorEval, slices: tuple, middle: Callable,
                   threshold: float = 0.98):
    """SVMD's dual-space direction (Shi, Liu & Mackey 2022, adaptive kernel
    ``K_psi(th, th') = E_z[k_half(th, z) grad^2 psi(z) k_half(z, th')]``):

        phi_k = (1/n^2) sum_m k_half(th_k, th_m) M_m sum_l [k_half(th_m, th_l) s(eta_l)
                                                          + J_l grad_{th_l} k_half(th_m, th_l)]

    with ``J_l = d theta / d eta`` (``grad^2 psi^{-1}``) and ``M_m = middle(m, v)`` applying
    ``grad^2 psi(th_m)`` (SVMD) or an inverse metric (SVNG) to the inner sum.
    """
    theta = ev.primal
    n = theta.shape[0]
    k_half, grad_k_half, h, num_eigen = sqrt_kernel(kernel, theta, threshold)
    inner_blocks = []
    for (lo, hi), J in zip(slices, ev.jacobians):
        g = grad_k_half[..., lo:hi]                                   # (m, l, k)
        rep = jnp.sum(g, axis=1) if J is None else jnp.einsum("lab,mlb->ma", J, g)
        inner_blocks.append(rep)
    inner = k_half @ ev.score + jnp.concatenate(inner_blocks, axis=1)   # (m, d)
    return k_half @ middle(inner) / n**2, h, num_eigen


class SVMDInfo(NamedTuple):
    stein_sq_norm: jax.Array
    bandwidth: jax.Array
    mean_log_density: jax.Array
    num_eigen: jax.Array
    ksd: jax.Array | None = None  # IMQ KSD of the particles (dual space for SVMD; ``with_ksd``)


def apply_hessian_psi(ev: MirrorEval, slices):
    """v_m -> grad^2 psi(th_m) v_m = J_m^{-1} v_m, block by block (or ``ev.hessian_psi``:
    affine dual coordinates, see `msvgd.preconditioned`)."""
    if ev.hessian_psi is not None:
        return ev.hessian_psi
    return lambda inner: solve_blocks(slices, ev.jacobians, inner)


def step(state: MSVGDState, eval_fn: Callable, slices: tuple, kernel: Kernel, optimizer,
         threshold: float = 0.98, with_ksd: bool = False) -> tuple[MSVGDState, SVMDInfo]:
    rng_key, batch_key = jax.random.split(state.rng_key)
    ev = eval_fn(state.particles, batch_key)
    phi, h, m = svmd_direction(kernel, ev, slices, apply_hessian_psi(ev, slices), threshold)
    updates, opt_state = optimizer.update(-phi, state.opt_state, state.particles)
    particles = optax.apply_updates(state.particles, updates)
    info = SVMDInfo(jnp.mean(jnp.sum(phi**2, -1)), h, jnp.mean(ev.log_density), m,
                    stein_discrepancy(state.particles, ev.score) if with_ksd else None)
    return MSVGDState(particles, opt_state, rng_key), info
