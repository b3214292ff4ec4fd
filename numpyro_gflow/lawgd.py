"""Laplacian-adjusted Wasserstein gradient descent (LAWGD), driven by coin betting.

Chewi, Le Gouic, Lu, Maunu & Rigollet, "SVGD as a kernelized Wasserstein gradient flow of the
chi-squared divergence" (NeurIPS 2020) move particles along

    x_i <- x_i - h (1/n) sum_j grad_1 K(x_i, x_j),   K(x, y) = sum_{k>=1} phi_k(x) phi_k(y) / lambda_k,

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
outside the box, or where ``pi`` was cut, get no force from the kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from numpyro.infer.initialization import init_to_uniform

from numpyro_gflow._validate import positive_float, positive_int
from numpyro_gflow.engine import ParticleEngine, Target
from numpyro_gflow.optim import coin_betting

__all__ = ["CoinLAWGD", "LAWGDBasis", "LAWGDState", "LAWGDInfo", "build_basis", "init", "step",
           "MAX_DIM"]

#: the largest dimension the grid eigen-decomposition supports
MAX_DIM = 3
_DEFAULT_GRID = {1: 400, 2: 64, 3: 22}


class LAWGDBasis(NamedTuple):
    low: jax.Array          # (d,) lower corner of the grid
    spacing: jax.Array      # (d,) grid spacing
    phi: jax.Array          # (K, n_1, ..., n_d) eigenfunctions on the grid
    grad_phi: jax.Array     # (K, n_1, ..., n_d, d) their gradients
    inv_eigenvalues: jax.Array  # (K,)


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


def build_basis(log_density, low, high, grid_size: int, num_eigen: int) -> tuple[LAWGDBasis, np.ndarray]:
    """Eigenfunctions of the Langevin generator of ``exp(log_density)`` on a grid over a box.

    ``log_density`` maps (d,) to a scalar (unnormalised). Returns the basis and the
    eigenvalues (including ``lambda_0``, for inspection). Host computation (SciPy), float64.
    """
    from scipy import sparse
    from scipy.sparse.linalg import eigsh

    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    d = low.shape[0]
    axes = [np.linspace(low[i], high[i], grid_size) for i in range(d)]
    spacing = (high - low) / (grid_size - 1)
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)

    score = jax.grad(log_density)
    div_score = lambda x: jnp.trace(jax.jacfwd(score)(x))  # noqa: E731
    pts = jnp.asarray(mesh, jnp.result_type(float))
    logp = np.asarray(jax.vmap(log_density)(pts), np.float64)
    s = np.asarray(jax.vmap(score)(pts), np.float64)
    div = np.asarray(jax.vmap(div_score)(pts), np.float64)
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
    basis = LAWGDBasis(jnp.asarray(low, dtype), jnp.asarray(spacing, dtype),
                       jnp.asarray(phi_grid, dtype), jnp.asarray(grads, dtype),
                       jnp.asarray(1.0 / lam, dtype))
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


class CoinLAWGD(ParticleEngine):
    """Coin LAWGD on a NumPyro model with at most `MAX_DIM` unconstrained dimensions.

    Args:
        model: a NumPyro model; its flattened unconstrained dimension must be <= 3.
        num_particles: particles for `run`.
        bounds: ``(low, high)`` arrays (d,) of the grid box in the unconstrained space; default:
            a 300-step Coin SVGD pilot sets the box and the start (see the module docs).
        grid_size: points per dimension (default 400 / 64 / 22 for d = 1 / 2 / 3).
        num_eigen: eigenpairs kept after the constant one (default 100).
        step_size: plain LAWGD step instead of coin betting (``None``: coin betting).

    Cost: the grid eigen-decomposition at ``init`` (seconds for d = 3), then O(n K 2^d) per
    step and no gradient evaluations at all during the run. Raises ``ValueError`` above d = 3.
    """

    # coin betting restarts particles whose values turn non-finite (the paper's guard), so a
    # step whose objective is NaN is recoverable: only a non-finite state stops the run
    tolerates_non_finite_objective = True

    objective = "direction_sq_norm"

    def __init__(self, model, *, num_particles: int | None = 100, bounds=None,
                 grid_size: int | None = None, num_eigen: int = 100,
                 step_size: float | None = None, alpha: float = 0.0,
                 init_strategy=init_to_uniform):
        super().__init__(model, num_particles=num_particles, init_strategy=init_strategy)
        self.bounds = bounds
        self.grid_size = None if grid_size is None else positive_int("grid_size", grid_size, 4)
        self.num_eigen = positive_int("num_eigen", num_eigen)
        self.optimizer = (coin_betting(alpha) if step_size is None
                          else optax.sgd(positive_float("step_size", step_size)))

    def _pilot(self, particles, target: Target):
        """300 Coin SVGD steps from the initial particles: where the mass is, and a warm start."""
        from numpyro_gflow import svgd as svgd_core
        from numpyro_gflow.kernels import RBFKernel

        score_fn = target.bridge.score_fn(target.model_args, target.model_kwargs)
        opt = coin_betting()
        body = lambda s, _: (svgd_core.step(s, score_fn, RBFKernel(), opt)[0], None)  # noqa: E731
        state, _ = jax.lax.scan(body, svgd_core.init(particles, opt, jax.random.key(0)), None,
                                length=300)
        return state.particles

    def _core_init(self, particles, rng_key, target: Target):
        d = target.bridge.dim
        if d > MAX_DIM:
            raise ValueError(
                f"CoinLAWGD supports models with at most {MAX_DIM} unconstrained dimensions "
                f"(grid eigen-decomposition); this model has {d} (sites {target.bridge.site_names})."
                " Use CoinSVGD instead.")
        if self.bounds is not None:
            low, high = (np.asarray(b, np.float64).reshape(-1) for b in self.bounds)
            if (low.shape != (d,) or high.shape != low.shape or not np.all(np.isfinite(low))
                    or not np.all(np.isfinite(high)) or np.any(high <= low)):
                raise ValueError(f"bounds must be (low, high), each of shape ({d},) with finite "
                                 f"entries and high > low, got {self.bounds!r}")
        else:
            particles = self._pilot(particles, target)
            pilot = np.asarray(particles, np.float64)
            centre, spread = pilot.mean(0), np.maximum(pilot.std(0), 1e-3)
            low, high = centre - 6 * spread, centre + 6 * spread
        args, kwargs = target.model_args, target.model_kwargs
        basis, eigenvalues = build_basis(
            lambda z: target.bridge.log_density(z, args, kwargs), low, high,
            self.grid_size or _DEFAULT_GRID[d], self.num_eigen)
        self.eigenvalues_ = eigenvalues
        return init(particles, basis, self.optimizer, rng_key)

    def _core_step(self, state, score_fn):
        return step(state, self.optimizer)
