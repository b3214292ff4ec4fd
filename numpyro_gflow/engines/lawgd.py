"""Coin LAWGD on a NumPyro model: the engine over `numpyro_gflow.core.lawgd`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer.initialization import init_to_uniform

from numpyro_gflow._validate import positive_float, positive_int
from numpyro_gflow.core.lawgd import (DEFAULT_GRID, MAX_DIM, build_basis, grid_values, init,
                                      step)
from numpyro_gflow.core.numerics import Affine
from numpyro_gflow.core.optim import coin_betting
from numpyro_gflow.engines.base import ParticleEngine, PreconditionedState, Target

__all__ = ["CoinLAWGD"]

#: the grid box is the pilot's mean +- BOX_SDS pilot sds per coordinate
BOX_SDS = 6.0


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
    supports_precondition = False     # its eigenbasis lives on a grid over the given bounds

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
        from numpyro_gflow.core import svgd as svgd_core
        from numpyro_gflow.core.kernels import RBFKernel

        def pilot(t, particles):
            score_fn = t.score_fn()
            opt = coin_betting()
            body = lambda s, _: (svgd_core.step(s, score_fn, RBFKernel(), opt)[0],  # noqa: E731
                                 None)
            state, _ = jax.lax.scan(body, svgd_core.init(particles, opt, jax.random.key(0)),
                                    None, length=300)
            return state.particles

        # compiled once per input signature (`_compiled_program`), not at every run
        return self._compiled_program(("lawgd_pilot", 300), target, pilot, particles)

    def _core_init(self, particles, rng_key, target: Target):
        d = target.bridge.dim
        if d > MAX_DIM:
            raise ValueError(
                f"CoinLAWGD supports models with at most {MAX_DIM} unconstrained dimensions "
                f"(grid eigen-decomposition); this model has {d} "
                f"(sites {target.bridge.site_names})."
                " Use CoinSVGD instead.")
        if self.bounds is not None:
            low, high = (np.asarray(b, np.float64).reshape(-1) for b in self.bounds)
            if (low.shape != (d,) or high.shape != low.shape or not np.all(np.isfinite(low))
                    or not np.all(np.isfinite(high)) or np.any(high <= low)):
                raise ValueError(f"bounds must be (low, high), each of shape ({d},) with finite "
                                 f"entries and high > low, got {self.bounds!r}")
            centre, spread = (low + high) / 2, (high - low) / (2 * BOX_SDS)
        else:
            particles = self._pilot(particles, target)
            pilot = np.asarray(particles, np.float64)
            centre, spread = pilot.mean(0), np.maximum(pilot.std(0), 1e-3)
        # the particles move in u = (z - centre) / spread, the box is [-BOX_SDS, BOX_SDS]^d
        # there: coin betting's first bets are about one unit of its coordinates, which must
        # be about one posterior sd, not one unit of NumPyro's space (a posterior sd of 0.14
        # there sent 16 % of the particles out of the box in the first 5 steps, for good)
        # (on the host: an eager jnp op would compile a program of its own)
        dtype = jnp.result_type(float)
        coords = Affine(np.asarray(centre, dtype), np.diag(spread).astype(dtype),
                        np.asarray(np.sum(np.log(spread)), dtype))
        u = (np.asarray(particles, np.float64) - centre) / spread
        box = np.full(d, float(BOX_SDS))
        t_u = target._replace(coords=coords)
        basis, _ = build_basis(
            t_u.log_density, -box, box,
            self.grid_size or DEFAULT_GRID[d], self.num_eigen,
            evaluate=lambda pts: self._compiled_program(
                "lawgd_grid", target,
                lambda t, c, x: grid_values(t._replace(coords=c).log_density, x), coords, pts))
        core = self._compiled_program(
            "lawgd_init", target, lambda t, p, b, k: init(p, b, self.optimizer, k),
            u.astype(dtype), basis, rng_key)
        return PreconditionedState(core, coords, rng_key)

    def _core_step(self, state, target):
        return step(state, self.optimizer)
