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
    "preconditioned",
    "solve_blocks",
    "step",
]


class MirrorEval(NamedTuple):
    log_density: jax.Array   # (n,) dual log density
    score: jax.Array         # (n, d) grad_eta log p_H
    primal: jax.Array        # (n, d) free primal coordinates theta (the kernel's input)
    jacobians: tuple         # per site: (n, k, k) d theta / d eta, or None for identity maps
    #: ``v (n, d) -> grad^2 psi(theta) v`` per particle (SVMD's middle factor) where it is not
    #: the blockwise inverse of ``jacobians`` (affine dual coordinates: see `preconditioned`)
    hessian_psi: Callable | None = None


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


def solve_blocks(slices: tuple, jacobians: tuple, v):
    """``J_m^{-1} v_m`` per particle, site block by site block (identity where a block's
    Jacobian is None): ``grad^2 psi(theta_m) v_m``."""
    out = []
    for (lo, hi), J in zip(slices, jacobians):
        b = v[:, lo:hi]
        out.append(b if J is None else jnp.linalg.solve(J, b[..., None])[..., 0])
    return jnp.concatenate(out, axis=1)


def preconditioned(eval_fn: Callable, slices: tuple, shift, scale) -> tuple[Callable, tuple]:
    """``eval_fn`` and ``slices`` for particles in affine coordinates of the dual, ``eta = shift
    + scale u`` (``W = scale``, e.g. the inverse-Hessian factor at the dual target's mode: what
    a dense mass matrix does for NUTS).

    This is MSVGD itself with the mirror map ``psi_u*(u) = psi*(shift + W u)`` (convex: an
    affine map of a convex function), whose primal is ``W^T theta`` and whose
    ``grad^2 psi_u^{-1} = W^T J W``, and with the kernel acting on ``theta_hat = P theta``, ``P
    = (J_0 W)^{-1}`` (``J_0`` the Jacobian at ``shift``: near the mode ``theta_hat ~ u``, the
    primal whitened by the dual's Laplace scale pushed through the map; any positive-definite
    kernel of the primal is allowed). By the chain rule the repulsion
    ``W^T J W grad_{W^T theta} k`` is ``(W^T J P^T) grad_{theta_hat} k``, so the cores run
    unchanged on one block with primal ``theta_hat``, score ``W^T s(eta)`` and Jacobian
    ``W^T J P^T`` (``J`` block-diagonal over the sites, the identity for identity maps).
    On identity maps this is SVGD in whitened coordinates. SVMD's ``grad^2 psi_u`` is
    ``W^{-1} J^{-1} W^{-T}``, applied with ``J``'s own blocks (``hessian_psi``): solving with
    the mixed ``W^T J P^T`` instead loses float32 precision where ``J`` is near-singular
    (a sparse Dirichlet's corners)."""
    W = scale
    W_inv = jnp.linalg.inv(W)
    d = W.shape[0]

    def full_jacobian(jacobians, n, dtype):
        J = jnp.broadcast_to(jnp.eye(d, dtype=dtype), (n, d, d))
        for (lo, hi), Jb in zip(slices, jacobians):
            if Jb is not None:
                J = J.at[:, lo:hi, lo:hi].set(Jb)
        return J

    ref = eval_fn(shift[None], None)
    theta_ref = ref.primal[0]
    P = W_inv @ jnp.linalg.inv(full_jacobian(ref.jacobians, 1, W.dtype)[0])   # (J_0 W)^{-1}

    def evaluate(u, rng_key=None):
        ev = eval_fn(shift + u @ W.T, rng_key)
        J = full_jacobian(ev.jacobians, u.shape[0], u.dtype)
        jac = jnp.einsum("ba,nbc,dc->nad", W, J, P)             # W^T J P^T

        def hessian_psi(v):                                      # W^{-1} J^{-1} W^{-T} v
            return solve_blocks(slices, ev.jacobians, v @ W_inv) @ W_inv.T

        return MirrorEval(ev.log_density, ev.score @ W, (ev.primal - theta_ref) @ P.T,
                          (jac,), hessian_psi)

    return evaluate, ((0, d),)


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
