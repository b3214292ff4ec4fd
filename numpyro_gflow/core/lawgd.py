"""Laplacian-adjusted Wasserstein gradient descent (LAWGD), driven by coin betting.

Chewi, Le Gouic, Lu, Maunu & Rigollet, "SVGD as a kernelized Wasserstein gradient flow of the
chi-squared divergence" (NeurIPS 2020) move particles along

    x_i <- x_i - h (1/n) sum_j grad_1 K(x_i, x_j),
    K(x, y) = sum_{k>=1} phi_k(x) phi_k(y) / lambda_k,

where ``(lambda_k, phi_k)`` are the eigenpairs of ``-L``, ``L f = Laplacian f - grad V . grad f``
the Langevin generator of the target ``pi ~ exp(-V)`` (``phi_k`` orthonormal in L^2(pi)), and
``k = 0`` (the constant, ``lambda_0 = 0``) is left out. Coin LAWGD (Sharrock & Nemeth 2023)
replaces the step ``h`` by coin betting.

The eigenpairs come from a documented eigen-decomposition on a grid, which is why this engine
is for low dimension only (``d <= 3``, `MAX_DIM`):

1. ``psi = phi sqrt(pi)`` turns ``-L`` into the Schrodinger operator
   ``H = -Laplacian + V_s``, ``V_s = |grad V|^2 / 4 - Laplacian V / 2`` (same eigenvalues).
2. On a regular grid over a box (Dirichlet boundary), ``H`` is the sparse 2d+1-point finite
   difference Laplacian plus ``diag(V_s)``; ``V_s`` is computed from the model's score and its
   divergence by autodiff. SciPy's ``eigsh`` (shift-invert below the spectrum) gives the
   ``num_eigen + 1`` smallest eigenpairs.
3. ``phi_k = psi_k / sqrt(pi)`` with ``pi`` normalised on the grid; where ``pi`` is below
   ``1e-10`` of its maximum, ``phi_k`` is cut to 0 (there the ratio is rounding noise).
4. During the run ``phi_k`` and its finite-difference gradient are interpolated
   (multilinearly) at the particles: the direction costs O(n K 2^d) per step, K eigenpairs.

Default box and start: a short Coin SVGD pilot (300 steps) from the initial particles; the box
is the pilot's mean +- 6 pilot sds per coordinate and LAWGD starts from the pilot's particles,
so the grid resolves the posterior rather than the (wider) initial spread. With
``bounds=(low, high)`` there is no pilot and LAWGD starts from the initial particles. Particles
outside the box, or where ``pi`` was cut, get no force from the kernel. (The engine runs this
core in the box's standardised coordinates, where coin betting's unit is a posterior sd.)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "DEFAULT_GRID",
    "LAWGDBasis",
    "LAWGDInfo",
    "LAWGDState",
    "MAX_DIM",
    "build_basis",
    "direction",
    "init",
    "step",
]

#: the largest dimension the grid eigen-decomposition supports
MAX_DIM = 3
#: default grid points per dimension, by dimension
DEFAULT_GRID = {1: 400, 2: 64, 3: 22}


class LAWGDBasis(NamedTuple):
    low: jax.Array          # (d,) lower corner of the grid
    spacing: jax.Array      # (d,) grid spacing
    phi: jax.Array          # (K, n_1, ..., n_d) eigenfunctions on the grid
    grad_phi: jax.Array     # (K, n_1, ..., n_d, d) their gradients
    inv_eigenvalues: jax.Array  # (K,)
    eigenvalues: jax.Array  # (K + 1,) all found on the grid, lambda_0 ~ 0 first (to inspect)


class LAWGDState(NamedTuple):
    particles: jax.Array
    opt_state: optax.OptState
    basis: LAWGDBasis
    rng_key: jax.Array


class LAWGDInfo(NamedTuple):
    direction_sq_norm: jax.Array   # mean_i |direction_i|^2, the objective
    outside_fraction: jax.Array    # particles outside the grid box


def _laplacian_1d(n: int, dx: float):
    from scipy import sparse
    main = np.full(n, 2.0 / dx**2)
    off = np.full(n - 1, -1.0 / dx**2)
    return sparse.diags([off, main, off], [-1, 0, 1], format="csr")


def grid_values(log_density, pts):
    """``(log p, score, div score)`` at each row of ``pts`` (m, d): what `build_basis` needs of
    the density (jit-able; pass it compiled as ``build_basis(..., evaluate=)``)."""
    score = jax.grad(log_density)
    div_score = lambda x: jnp.trace(jax.jacfwd(score)(x))  # noqa: E731
    return jax.vmap(log_density)(pts), jax.vmap(score)(pts), jax.vmap(div_score)(pts)


def build_basis(log_density, low, high, grid_size: int,
                num_eigen: int, evaluate=None) -> tuple[LAWGDBasis, np.ndarray]:
    """Eigenfunctions of the Langevin generator of ``exp(log_density)`` on a grid over a box.

    ``log_density`` maps (d,) to a scalar (unnormalised); ``evaluate`` (optional) maps grid
    points (m, d) to `grid_values` of it, e.g. compiled (default: `grid_values` op by op).
    Returns the basis and the eigenvalues (including ``lambda_0``, for inspection). Host
    computation (SciPy), float64.
    """
    from scipy import sparse
    from scipy.sparse.linalg import eigsh

    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    d = low.shape[0]
    axes = [np.linspace(low[i], high[i], grid_size) for i in range(d)]
    spacing = (high - low) / (grid_size - 1)
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)

    pts = np.asarray(mesh, jnp.result_type(float))
    if evaluate is None:
        evaluate = lambda x: grid_values(log_density, x)  # noqa: E731
    logp, s, div = (np.asarray(v, np.float64) for v in evaluate(pts))
    # V = -log p: |grad V|^2 / 4 - Laplacian V / 2 = |s|^2 / 4 + div(s) / 2
    v_s = np.sum(s**2, -1) / 4.0 + div / 2.0
    if not (np.all(np.isfinite(v_s)) and np.all(np.isfinite(logp))):
        raise ValueError("the log density or its derivatives are not finite on the LAWGD grid; "
                         "narrow the bounds= box")

    eye = [sparse.identity(grid_size, format="csr")] * d
    H = sparse.diags(v_s, 0, format="csr")
    for i in range(d):
        factors = list(eye)
        factors[i] = _laplacian_1d(grid_size, spacing[i])
        term = factors[0]
        for f in factors[1:]:
            term = sparse.kron(term, f, format="csr")
        H = H + term
    k = min(num_eigen + 1, H.shape[0] - 2)
    shift = float(min(v_s.min(), 0.0) - 1.0)  # below the spectrum: shift-invert finds the bottom
    # a fixed start vector (ARPACK's default is random) and a fixed sign per eigenvector
    # (largest entry positive): the same box gives the same basis, bit for bit, on every run
    eigenvalues, vectors = eigsh(H.tocsc(), k=k, sigma=shift, which="LM",
                                 v0=np.full(H.shape[0], H.shape[0] ** -0.5))
    order = np.argsort(eigenvalues)
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    top = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
    vectors = vectors * np.where(top < 0, -1.0, 1.0)

    # psi_k(x_g) = u_k[g] / sqrt(cell volume); pi normalised on the grid; phi_k = psi_k / sqrt(pi)
    cell = float(np.prod(spacing))
    logpi = logp - (np.log(np.sum(np.exp(logp - logp.max())) * cell) + logp.max())
    keep = logp - logp.max() > np.log(1e-10)
    inv_sqrt_pi = np.where(keep, np.exp(-0.5 * np.where(keep, logpi, 0.0)), 0.0)
    phi = (vectors[:, 1:] / np.sqrt(cell)) * inv_sqrt_pi[:, None]      # drop the constant
    lam = eigenvalues[1:]
    if np.any(lam <= 0):
        raise ValueError("LAWGD: non-positive generator eigenvalue on the grid; the box or grid "
                         "is too coarse for this target (raise grid_size or set bounds=)")
    shape = (grid_size,) * d
    phi_grid = phi.T.reshape((-1,) + shape)
    grads = np.stack(np.gradient(phi_grid, *spacing, axis=tuple(range(1, d + 1))), -1) \
        if d > 1 else np.gradient(phi_grid, spacing[0], axis=1)[..., None]
    dtype = jnp.result_type(float)
    # host (NumPy) arrays: a cast or a transfer on the device compiles a program per array;
    # the engine's compiled init takes them as they are
    basis = LAWGDBasis(*(np.asarray(a, dtype) for a in (
        low, spacing, phi_grid, grads, 1.0 / lam, eigenvalues)))
    return basis, eigenvalues


def _interpolate(basis: LAWGDBasis, x):
    """phi_k(x) (K,) and grad phi_k(x) (K, d) at one point, multilinear; 0 outside the box."""
    d = x.shape[0]
    shape = jnp.array(basis.phi.shape[1:])
    u = (x - basis.low) / basis.spacing
    inside = jnp.all((u >= 0) & (u <= shape - 1))
    i0 = jnp.clip(jnp.floor(u).astype(jnp.int32), 0, shape - 2)
    t = jnp.clip(u - i0, 0.0, 1.0)
    phi = jnp.zeros(basis.phi.shape[0], x.dtype)
    grad = jnp.zeros(basis.grad_phi.shape[0:1] + (d,), x.dtype)
    for corner in range(2**d):
        offs = jnp.array([(corner >> i) & 1 for i in range(d)])
        w = jnp.prod(jnp.where(offs == 1, t, 1.0 - t))
        idx = tuple(i0 + offs)
        phi = phi + w * basis.phi[(slice(None),) + idx]
        grad = grad + w * basis.grad_phi[(slice(None),) + idx]
    return jnp.where(inside, phi, 0.0), jnp.where(inside, grad, 0.0), inside


def direction(basis: LAWGDBasis, particles):
    """``-(1/n) sum_j grad_1 K(x_i, x_j)`` for all particles: O(n K 2^d)."""
    phi, grad, inside = jax.vmap(lambda x: _interpolate(basis, x))(particles)
    weights = basis.inv_eigenvalues * jnp.mean(phi, axis=0)           # (K,)
    return -jnp.einsum("nkd,k->nd", grad, weights), 1.0 - jnp.mean(inside)


def init(particles, basis: LAWGDBasis, optimizer, rng_key) -> LAWGDState:
    return LAWGDState(particles, optimizer.init(particles), basis, rng_key)


def step(state: LAWGDState, optimizer) -> tuple[LAWGDState, LAWGDInfo]:
    v, outside = direction(state.basis, state.particles)
    updates, opt_state = optimizer.update(-v, state.opt_state, state.particles)
    particles = optax.apply_updates(state.particles, updates)
    info = LAWGDInfo(jnp.mean(jnp.sum(v**2, -1)), outside)
    return LAWGDState(particles, opt_state, state.basis, state.rng_key), info
