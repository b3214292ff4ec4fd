"""FB-GVI on a NumPyro model: the engine over `numpyro_gflow.core.fbgvi`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.infer.initialization import init_to_uniform

from numpyro_gflow._validate import positive_float_or, positive_int
from numpyro_gflow.core.fbgvi import init, moment_matched_draws, step
from numpyro_gflow.core.numerics import climb, curvature, smallest_curvature
from numpyro_gflow.engines.base import DensityEngine, Target
from numpyro_gflow.result import InferenceResult

__all__ = ["FBGVI"]


class FBGVI(DensityEngine):
    """Full-covariance Gaussian VI by forward-backward steps in the Bures-Wasserstein space.

    Args:
        model: a NumPyro model with continuous latent sites.
        step_size: ``h``. ``"auto"`` (default): ``1 / beta`` with ``beta`` the largest
            curvature of ``-log pi`` found by power iteration on Hessian-vector products at the
            initial mean (the paper's guarantees need ``h <= 1 / beta``), and at every step also
            at most ``1 / |lambda|_max`` of that step's Hessian estimate: on targets that are not
            log-concave or not globally smooth (hierarchical models) the start's ``beta``
            understates the curvature elsewhere, and a single draw's Hessian could then make
            ``|I - h H| > 1`` and the covariance grow without bound (stochastic FB-GVI on eight
            schools did at step 7). On a ``beta``-smooth log-concave target the cap never binds.
            A number: that fixed ``h`` (schedule aside), no cap.
        stochastic: ``False`` (default): deterministic FB-GVI with a fixed antithetic set of
            ``num_mc_samples`` draws; ``True``: the paper's stochastic FB-GVI, one draw per step
            and the decreasing step schedule (module docs).
        num_mc_samples: draws per step: the fixed set of the deterministic variant (default
            100, antithetic and moment-matched) or fresh draws of the stochastic one (default 1,
            the paper's; the ``"stein"`` Hessian needs more than d to be usable).
        hessian: ``"exact"`` (autodiff; d Hessian-vector products per draw) or ``"stein"``
            (first-order, gradients only: use it for large d).
        map_steps: Adam steps (lr 0.05) toward the MAP before starting (default 200).
        init_strategy: NumPyro init strategy for the starting mean.

    The start covariance is isotropic, ``(d / tr H) I`` with ``H = -grad^2 log pi`` at the start
    mean. The result has the fitted Gaussian as a NumPyro guide (params ``fbgvi_loc``,
    ``fbgvi_scale_tril``), fresh draws with ``get_samples(num_samples, rng_key)``, ``log_q``,
    ``elbo``, and the per-step ELBO estimate in ``trace``.
    """

    objective = "elbo"

    def __init__(self, model, *, step_size="auto", stochastic: bool = False,
                 num_mc_samples: int | None = None, hessian: str = "exact", map_steps: int = 200,
                 init_strategy=init_to_uniform):
        super().__init__(model, init_strategy=init_strategy)
        self.step_size = positive_float_or("step_size", step_size, ("auto",))
        if hessian not in ("exact", "stein"):
            raise ValueError(f"hessian must be 'exact' or 'stein', got {hessian!r}")
        if not isinstance(stochastic, bool):
            raise TypeError(f"stochastic must be a bool, got {type(stochastic).__name__}")
        self.stochastic, self.hessian = stochastic, hessian
        self.num_mc_samples = (None if num_mc_samples is None
                               else positive_int("num_mc_samples", num_mc_samples, 1))
        self.map_steps = positive_int("map_steps", map_steps, 0)

    def _core_init(self, z, rng_key, target: Target):
        log_p = target.log_density
        particles = z
        if self.map_steps:
            particles = climb(log_p, particles, self.map_steps)
        trace, top = curvature(log_p, particles, rng_key)
        d = particles.shape[1]
        var = jnp.where(trace[0] > 0, d / jnp.maximum(trace[0], 1e-12), 1.0)
        h = 1.0 / jnp.maximum(top[0], 1e-6) if self.step_size == "auto" else self.step_size
        # the schedule's strong-convexity constant: the smallest curvature at the start mean
        low = smallest_curvature(log_p, particles[0], top[0], jax.random.fold_in(rng_key, 3))
        alpha = jnp.where(low > 0, low, jnp.where(trace[0] > 0, trace[0] / d, 1.0))
        B = self.num_mc_samples or (1 if self.stochastic else 100)
        if self.stochastic:
            draws = jnp.zeros((B, d), particles.dtype)    # only the shape is used
        else:
            draws = moment_matched_draws(jax.random.fold_in(rng_key, 7), B, d).astype(
                particles.dtype)
        return init(particles[0], var * jnp.eye(d, dtype=particles.dtype), h, alpha, draws, rng_key)

    def _core_step(self, state, target):
        return step(state, target.score_fn(), target.hvp_fn(), self.hessian, self.stochastic,
                    local_cap=self.step_size == "auto")

    def _points(self, state):
        return state.mean[None]

    def _result(self, state, info, target, rng_key) -> InferenceResult:
        loc, cov = state.mean, state.cov
        scale_tril = jnp.linalg.cholesky(cov)
        q = dist.MultivariateNormal(loc, scale_tril=scale_tril)

        def sampler(key, num_samples):
            return q.sample(key, (num_samples,))

        return self._density_result(state, info, target, rng_key, sample=sampler, log_q=q.log_prob,
                                    latent=_fbgvi_latent,
                                    params={"fbgvi_loc": loc, "fbgvi_scale_tril": scale_tril})


def _fbgvi_latent(dim):
    import numpyro

    loc = numpyro.param("fbgvi_loc", jnp.zeros(dim))
    scale_tril = numpyro.param("fbgvi_scale_tril", jnp.eye(dim))
    return dist.MultivariateNormal(loc, scale_tril=scale_tril)
