"""FB-GVI on a NumPyro model: the engine over `numpyro_gflow.core.fbgvi`."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.infer.initialization import init_to_uniform

from numpyro_gflow._validate import positive_float, positive_float_or, positive_int
from numpyro_gflow.core.fbgvi import FBGVIState, init, moment_matched_draws, step
from numpyro_gflow.core.numerics import (
    Affine,
    climb,
    curvature_extremes,
    best_laplace,
    gaussian_log_density,
    lower_factor,
    spread_starts,
)
from numpyro_gflow.engines.base import DensityEngine, Target
from numpyro_gflow.result import InferenceResult

__all__ = [
    "FBGVI",
    "FBGVIRunState",
]

#: extra starting points (uniform in (-2, 2), unconstrained) of the Laplace mode search, beside
#: the init strategy's point; the highest mode wins (`numerics.best_laplace`)
LAPLACE_STARTS = 7


#: the power of the stochastic variant's iterate averaging (`numpyro_gflow.core.fbgvi.averaged`:
#: iterate j weighted like j^3, so the last half of a run carries 94 % of the weight)
AVERAGE_POWER = 3.0


class FBGVIRunState(NamedTuple):
    """FB-GVI's state in the engine's coordinates ``u`` (``z = coords.to_z(u)``): the core's
    Gaussian ``N(core.mean, core.cov)`` in ``u`` (the last iterate) and the affine map.
    ``mean`` and ``cov`` are the fitted Gaussian in NumPyro's unconstrained space: the core's
    iterate average (``core.avg_mean``, ``core.avg_cov``; the last iterate where the engine
    does not average)."""

    core: FBGVIState
    coords: Affine

    @property
    def mean(self):
        return self.coords.to_z(self.core.avg_mean)

    @property
    def cov(self):
        s = self.coords.scale
        return s @ self.core.avg_cov @ s.T

    @property
    def scale_tril(self):
        """Lower Cholesky factor of ``cov``, formed without squaring the condition number."""
        return lower_factor(self.coords.scale @ jnp.linalg.cholesky(self.core.avg_cov))


class FBGVI(DensityEngine):
    """Full-covariance Gaussian VI by forward-backward steps in the Bures-Wasserstein space.

    Args:
        model: a NumPyro model with continuous latent sites.
        step_size: ``h``. ``"auto"`` (default): ``1 / beta`` with ``beta`` the largest
            curvature of ``-log pi`` at the initial mean (the dense Hessian's eigenvalues up to
            d = 200, power iteration on Hessian-vector products above; the paper's guarantees
            need ``h <= 1 / beta``), and at every step also
            at most ``1 / |lambda|_max`` of that step's Hessian estimate: on targets that are not
            log-concave or not globally smooth (hierarchical models) the start's ``beta``
            understates the curvature elsewhere, and a single draw's Hessian could then make
            ``|I - h H| > 1`` and the covariance grow without bound (stochastic FB-GVI on eight
            schools did at step 7). On a ``beta``-smooth log-concave target the cap never binds.
            The deterministic variant keeps a margin, ``h <= 0.5 / |lambda|_max``: nearer the
            cap's edge it locked into 2-cycles (a logistic regression's mean jumping 0.1 sd
            every step; `numpyro_gflow.core.fbgvi.CAP_MARGIN`).
            A number: that fixed ``h`` (schedule aside), no cap.
        stochastic: ``False`` (default): deterministic FB-GVI with a fixed antithetic set of
            ``num_mc_samples`` draws; ``True``: the paper's stochastic FB-GVI, one draw per step
            and the decreasing step schedule (module docs).
        num_mc_samples: draws per step: the fixed set of the deterministic variant (default
            100, antithetic and moment-matched) or fresh draws of the stochastic one (default 1,
            the paper's; the ``"stein"`` Hessian needs more than d to be usable).
        hessian: ``"exact"`` (autodiff; d Hessian-vector products per draw) or ``"stein"``
            (first-order, gradients only: use it for large d).
        precondition: ``"auto"`` (default): ``"laplace"`` for the deterministic variant,
            ``None`` for the stochastic one. ``"laplace"``: start at the Laplace approximation
            (mode by `numerics.best_laplace`: from the init strategy's point and 7 more uniform
            in (-2, 2), ``map_steps`` Adam steps then Newton steps each, the highest mode wins;
            covariance its
            inverse Hessian, float32-safe by `numerics.whitening`) and run the iteration in its
            whitened coordinates ``u = W^{-1}(z - mode)``. The Gaussian family and the KL
            optimum are the same in any affine coordinates, so this changes the path, not the
            answer: the step size is then set by the whitened curvature (~1), and a posterior
            whose scales or correlations are far from 1 (an uncentred predictor: intercept and
            slope at correlation 0.999) converges in tens of steps instead of never. ``None``:
            the paper's iteration in NumPyro's unconstrained space, from the Adam climb's end
            with the isotropic start covariance ``(d / tr H) I``. Why not ``"laplace"`` for
            the stochastic variant: its O(1/k) schedule ``h / (1 + alpha h k)`` takes
            ``alpha`` from the start's curvature, which whitening makes ~1, so the step decays
            from the first steps and the fit stays near the Laplace approximation (measured on
            eight schools, 2000 steps, 2 seeds: 0.62-0.65 NUTS sd off with it, 0.08-0.22
            without; deterministic FB-GVI 0.11-0.12 with it, 0.07-0.15 without).
        map_steps: Adam steps (lr 0.05) toward the MAP before starting (default 200).
        average: fit the average of the iterates instead of the last one (polynomial-decay
            averaging, iterate ``j`` weighted like ``j^3``: the last half of the run carries
            94 % of the weight; `numpyro_gflow.core.fbgvi.averaged`). ``"auto"`` (default):
            for the stochastic variant only. One fresh draw per step (and mini-batches) leave
            the last iterate jumping about the fixed point by its noise; the average cancels
            most of it (benchmarks/experiments/minibatch_bias). The deterministic variant's
            iterates converge; averaging them would only slow it.
        tol: the deterministic variant stops at its fixed point: once the distance left to it
            (estimated from the last steps' moves and their contraction rate, in sds of the
            fitted Gaussian; `numpyro_gflow.core.fbgvi.step`) is below ``tol`` for 5 steps in a
            row, the remaining steps leave the fit unchanged and cost nothing (the trace stays
            flat; ``result.state.core.count`` is the number of steps that moved). Default
            ``1e-3``: far below the Monte Carlo error of any draws from the fit. ``None``: run
            every step. The stochastic variant ignores it (its iterates never settle).
        init_strategy: NumPyro init strategy for the starting point.

    The result has the fitted Gaussian as a NumPyro guide (params ``fbgvi_loc``,
    ``fbgvi_scale_tril``), fresh draws with ``get_samples(num_samples, rng_key)``, ``log_q``,
    ``elbo``, and the per-step ELBO estimate in ``trace``; ``result.state.mean`` / ``.cov`` are
    the Gaussian in the unconstrained space (``result.state.core`` in the engine's coordinates).
    """

    traceable_init = True

    objective = "elbo"

    def __init__(self, model, *, step_size="auto", stochastic: bool = False,
                 num_mc_samples: int | None = None, hessian: str = "exact",
                 precondition: str | None = "auto", map_steps: int = 200,
                 average="auto", tol: float | None = 1e-3, init_strategy=init_to_uniform):
        super().__init__(model, init_strategy=init_strategy)
        self.step_size = positive_float_or("step_size", step_size, ("auto",))
        if hessian not in ("exact", "stein"):
            raise ValueError(f"hessian must be 'exact' or 'stein', got {hessian!r}")
        if precondition not in ("auto", "laplace", None):
            raise ValueError(f"precondition must be 'auto', 'laplace' or None, got "
                             f"{precondition!r}")
        if not isinstance(stochastic, bool):
            raise TypeError(f"stochastic must be a bool, got {type(stochastic).__name__}")
        if precondition == "auto":
            precondition = None if stochastic else "laplace"
        self.stochastic, self.hessian = stochastic, hessian
        self.precondition = precondition
        self.num_mc_samples = (None if num_mc_samples is None
                               else positive_int("num_mc_samples", num_mc_samples, 1))
        self.map_steps = positive_int("map_steps", map_steps, 0)
        if average == "auto":
            average = stochastic
        if not isinstance(average, bool):
            raise TypeError(f"average must be 'auto' or a bool, got {average!r}")
        self.average = average
        self.tol = positive_float("tol", tol, allow_none=True)

    def _minibatch_note(self):
        if self.stochastic:
            return None
        return ("deterministic FB-GVI on mini-batches: its constant step never averages the "
                "batch noise out, so the Gaussian keeps jumping with the last batches instead "
                "of converging (measured: 1.3-4.4 posterior sds off on a hierarchical "
                "regression with 50-row batches of 500 rows); use FBGVI(model, "
                "stochastic=True), whose step decays, with about 10^4 steps")

    def _core_init(self, z, rng_key, target: Target):
        d = z.shape[1]
        if self.precondition == "laplace":
            starts = spread_starts(z[0], jax.random.fold_in(rng_key, 11), LAPLACE_STARTS)
            mode, whiten = best_laplace(target.log_density, starts, self.map_steps)
            coords = Affine.of(mode, whiten)
            start = jnp.zeros((1, d), z.dtype)
        else:
            coords = Affine.identity(d, z.dtype)
            start = climb(target.log_density, z, self.map_steps) if self.map_steps else z
        log_p = coords.log_p(target.log_density)
        # trace, largest and smallest curvature at the start mean (the last: the schedule's
        # strong-convexity constant); exact from the dense Hessian up to d = 200
        trace, top, low = curvature_extremes(log_p, start[0], rng_key)
        if self.precondition == "laplace":
            cov = jnp.eye(d, dtype=z.dtype)      # the Laplace covariance, in its own coordinates
        else:
            cov = jnp.where(trace > 0, d / jnp.maximum(trace, 1e-12), 1.0) * jnp.eye(
                d, dtype=z.dtype)
        h = 1.0 / jnp.maximum(top, 1e-6) if self.step_size == "auto" else self.step_size
        alpha = jnp.where(low > 0, low, jnp.where(trace > 0, trace / d, 1.0))
        B = self.num_mc_samples or (1 if self.stochastic else 100)
        if self.stochastic:
            draws = jnp.zeros((B, d), z.dtype)    # only the shape is used
        else:
            draws = moment_matched_draws(jax.random.fold_in(rng_key, 7), B, d).astype(z.dtype)
        return FBGVIRunState(init(start[0], cov, h, alpha, draws, rng_key), coords)

    def _core_step(self, state, target):
        coords = state.coords
        core, info = step(state.core, coords.score_fn(target.score_fn()),
                          coords.hvp_fn(target.hvp_fn()), self.hessian, self.stochastic,
                          local_cap=self.step_size == "auto",
                          average=AVERAGE_POWER if self.average else None, tol=self.tol)
        # the ELBO in z: the entropy of q_z is that of q_u plus log |det scale|
        return state._replace(core=core), info._replace(elbo=info.elbo + coords.log_det)

    def _shrink_step(self, state, factor):
        return state._replace(core=state.core._replace(step_size=state.core.step_size * factor))

    def _points(self, state):
        return state.mean[None]

    def _result(self, state, info, target, rng_key) -> InferenceResult:
        return self._density_result(state, info, target, rng_key, fit=_fbgvi_fit,
                                    sample=_fbgvi_sample, log_q=_fbgvi_log_q,
                                    latent=_fbgvi_latent,
                                    guide_params=("fbgvi_loc", "fbgvi_scale_tril"))


def _fbgvi_fit(state):
    return {"fbgvi_loc": state.mean, "fbgvi_scale_tril": state.scale_tril}


def _fbgvi_sample(fitted, key, num_samples):
    loc, tril = fitted["fbgvi_loc"], fitted["fbgvi_scale_tril"]
    return loc + jax.random.normal(key, (num_samples, loc.shape[0]), loc.dtype) @ tril.T


def _fbgvi_log_q(fitted, z):
    return gaussian_log_density(z, fitted["fbgvi_loc"], fitted["fbgvi_scale_tril"])


def _fbgvi_latent(dim):
    import numpyro

    loc = numpyro.param("fbgvi_loc", jnp.zeros(dim))
    scale_tril = numpyro.param("fbgvi_scale_tril", jnp.eye(dim))
    return dist.MultivariateNormal(loc, scale_tril=scale_tril)
