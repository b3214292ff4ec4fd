"""IsoGaussianMixtureVI on a NumPyro model: the engine over `numpyro_gflow.core.isomix`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer.initialization import init_to_uniform

from numpyro_gflow._validate import positive_float_or, positive_int
from numpyro_gflow.core.isomix import (
    averaged,
    init,
    make_schedule,
    mixture_log_density,
    sample_mixture,
    step,
)
from numpyro_gflow.core.numerics import (
    climb,
    curvature,
    laplace,
    lower_factor,
    replace_stragglers,
    whitening,
)
from numpyro_gflow.engines.base import DensityEngine, Target
from numpyro_gflow.result import InferenceResult

__all__ = ["IsoGaussianMixtureVI"]


class IsoGaussianMixtureVI(DensityEngine):
    """A uniform mixture of N isotropic Gaussians fitted by the IBW or MD flow.

    Args:
        model: a NumPyro model with continuous latent sites.
        num_components: N (the paper uses 1, 10, 20).
        variance_update: ``"ibw"`` (isotropic Bures-Wasserstein) or ``"md"`` (entropic mirror
            descent).
        step_size: ``h`` for means and variances. ``"auto"`` (default): ``0.5 / L`` with ``L``
            the largest curvature of ``-log pi`` at the initial means (power iteration on
            Hessian-vector products); the mean step is stable for ``h < 2 / L``. The paper's
            1.0 suits its unit-scale toy targets.
        num_mc_samples: B draws per component per step (paper: 10; 100 for logistic
            regression).
        initial_variance: ``"laplace"`` (default): per component ``d / tr(-grad^2 log pi)`` at
            its initial mean, the best isotropic variance for a Gaussian of that curvature (1.0
            where the curvature is not positive); or a common float (the paper uses 5).
        map_steps: Adam steps (lr 0.05) of ascent on ``log pi`` from each initial mean before
            the flow starts (default 200; 0 for none); each component climbs its own hill, which
            helps components start on different modes. A component whose climb ends more than
            ``max(20, d)`` nats below the best one (a mode of negligible mass, or a start where
            the density is absurd) restarts from a copy of a better one
            (`numerics.replace_stragglers`).
        init_strategy: per-component NumPyro init strategy for the means (default
            ``init_to_uniform``: U(-2, 2) in the unconstrained space; the paper draws means
            from U(-5, 5)^d, i.e. ``init_to_uniform(radius=5)``).
        preconditioner: ``None`` (default: the paper's algorithm in NumPyro's unconstrained
            coordinates z). Otherwise a fixed linear map z = A u, and the paper's algorithm runs
            unchanged on the target pushed to u; the fitted family is then a uniform mixture
            of N(m_i, eps_i A A^T) in z, i.e. isotropic in u, not in z. This is an extension
            (the paper's family is isotropic in whatever coordinates it is given), costing
            O(d^2) memory and O(N B d^2) per step. ``"laplace"``: each climbed initial mean
            is finished by Newton steps (`numerics.laplace`), and A = H^{-1/2} with H the
            Hessian of -log pi at the highest of them (`numerics.whitening`: float32-safe,
            eigenvalues floored at 1e-6 of the largest in absolute value); a (d,)
            vector: A = diag(vector); a (d, d) matrix: A itself (e.g. a Cholesky factor of a
            covariance estimate). ``"adaptive"``: starts as ``"laplace"``, then A is
            re-estimated from the fitted mixture's own covariance (A = Sigma_q^{1/2}) after 20 %
            and 40 % of ``num_steps`` (each component's variance is projected to the closest
            isotropic one in the new coordinates); like NUTS's windowed mass-matrix adaptation.
            On a skewed posterior this reaches a better fixed point than the Hessian at the
            mode (see docs/engines/isomix.md).
        average_last: fraction of the run whose iterates (means, variances) are averaged into
            the result (Polyak-Ruppert averaging; default 0: the final iterate, as in the
            paper). The constant step leaves the iterates jittering around the fixed point by
            Monte Carlo noise; averaging the last half removes most of it. With
            ``"adaptive"`` the averaging starts no earlier than the last re-estimation. The
            trace is of the iterates, not of the average.

    ``run(rng_key, num_steps, *args, **kwargs)`` returns an `InferenceResult` with a guide
    (``Predictive(model, guide=result.guide, params=result.params, num_samples=...)``),
    ``get_samples(num_samples, rng_key)`` for fresh draws (``get_samples()``: 1000 draws made
    at the end of the run), ``log_q`` and ``elbo``; the trace holds the per-step ``elbo``.
    Cost per step: N * B gradient evaluations and O(N^2 B d) for the mixture score.
    """

    traceable_init = True

    objective = "elbo"

    def __init__(self, model, *, num_components: int = 10, variance_update: str = "ibw",
                 step_size="auto", num_mc_samples: int = 10, initial_variance="laplace",
                 map_steps: int = 200, init_strategy=init_to_uniform, preconditioner=None,
                 average_last: float = 0.0):
        super().__init__(model, init_strategy=init_strategy)
        self.num_components = positive_int("num_components", num_components, 1)
        if variance_update not in ("ibw", "md"):
            raise ValueError(f"variance_update must be 'ibw' or 'md', got {variance_update!r}")
        self.variance_update = variance_update
        self.step_size = positive_float_or("step_size", step_size, ("auto",))
        self.num_mc_samples = positive_int("num_mc_samples", num_mc_samples)
        self.initial_variance = positive_float_or("initial_variance", initial_variance,
                                                  ("laplace",))
        self.map_steps = positive_int("map_steps", map_steps, 0)
        if isinstance(preconditioner, str):
            if preconditioner not in ("laplace", "adaptive"):
                raise ValueError("preconditioner must be None, 'laplace', 'adaptive' or an array, "
                                 f"got {preconditioner!r}")
        elif preconditioner is not None:
            preconditioner = jnp.asarray(preconditioner)
            if preconditioner.ndim not in (1, 2) or not bool(jnp.all(jnp.isfinite(preconditioner))):
                raise ValueError("preconditioner must be None, 'laplace', a (d,) vector or a "
                                 "(d, d) matrix of finite values")
        self.preconditioner = preconditioner
        if isinstance(average_last, bool) or not isinstance(average_last, (int, float)) \
                or not 0.0 <= average_last < 1.0:
            raise ValueError(f"average_last must be a number in [0, 1), got {average_last!r}")
        self.average_last = float(average_last)

    @property
    def num_points(self) -> int:
        return self.num_components

    def _core_init(self, particles, rng_key, target: Target):
        log_p = target.log_density
        if self.map_steps:
            particles = climb(log_p, particles, self.map_steps)
        if isinstance(self.preconditioner, str):
            # Newton steps finish each climb at its local mode: Adam alone stalls far from it
            # on ill-conditioned posteriors (posteriordb's kidiq: 13 sds off), and the
            # preconditioner is the Hessian at the best of these points
            particles = jax.vmap(lambda x: laplace(log_p, x, 0)[0])(particles)
        if self.map_steps:
            # a climb that ended far below the best (a negligible mode, or stuck where the
            # density is absurd) would put 1/N of the mass there: restart it from a good one
            particles = replace_stragglers(log_p, particles)
        scale = self._scale(log_p, particles)
        if scale is not None:
            # curvatures (for the initial variances and the auto step) of the target in u
            log_p_z = log_p
            log_p = lambda u: log_p_z(scale @ u)  # noqa: E731
        if self.initial_variance == "laplace" or self.step_size == "auto":
            u = particles if scale is None else particles @ jnp.linalg.inv(scale).T
            trace, top = curvature(log_p, u, rng_key)
        d = particles.shape[1]
        if self.initial_variance == "laplace":
            # the best isotropic Gaussian for a Gaussian target of precision H has variance d / tr H
            variances = jnp.where(trace > 0, d / jnp.maximum(trace, 1e-12), 1.0)
            variances = jnp.clip(variances, 1e-8, 1e4)
        else:
            variances = jnp.full(particles.shape[:1], self.initial_variance, particles.dtype)
        if self.step_size == "auto":
            # stable mean steps need h < 2 / L; take a quarter of that bound, L the largest
            # curvature found at the initial means (power iteration on Hessian-vector products)
            h = 0.5 / jnp.maximum(jnp.max(top), 1e-6)
        else:
            h = self.step_size
        return init(particles, variances, h, rng_key, scale,
                    self._schedule(particles, target.num_steps))

    def _schedule(self, particles, num_steps):
        if num_steps is None or (self.preconditioner != "adaptive" and not self.average_last):
            return None
        rewhiten_at = ()
        if self.preconditioner == "adaptive":
            rewhiten_at = tuple(sorted({max(1, round(f * num_steps)) for f in (0.2, 0.4)}))
        average_from = None
        if self.average_last:
            average_from = max(int(num_steps * (1.0 - self.average_last)), *rewhiten_at, 0)
        return make_schedule(particles, rewhiten_at, average_from)

    def _scale(self, log_p, particles):
        """The preconditioner's matrix A (None without one)."""
        p = self.preconditioner
        d = particles.shape[1]
        if p is None:
            return None
        if not isinstance(p, str):
            p = jnp.asarray(p, particles.dtype)
            if p.shape not in ((d,), (d, d)):
                raise ValueError(f"preconditioner has shape {p.shape}, "
                                 f"expected ({d},) or ({d}, {d})")
            return jnp.diag(p) if p.ndim == 1 else p
        center = particles[jnp.argmax(jax.vmap(log_p)(particles))]
        # float32-safe inverse-Hessian factor (Jacobi-scaled, refined): the plain floored
        # eigen-decomposition shrank flat directions on uncentred regressions
        return whitening(log_p, center)

    def _core_step(self, state, target):
        return step(state, target.score_fn(), self.num_mc_samples, self.variance_update)

    def _shrink_step(self, state, factor):
        return state._replace(step_size=state.step_size * factor)

    def _step_acceptable(self, info):
        # IBW needs h s_i / (d eps_i) < 1 (the factor 1 - h s / (d eps) stays positive); a
        # clipped factor means the step was too long for that component's variance: halve it.
        # (Eight schools in the Laplace coordinates: the step set at the mode crushed the
        # variances 100-fold in one step where the funnel's draws are 1000 times as curved,
        # and the run went non-finite at step 4.)
        return info.ibw_clipped == 0

    def _points(self, state):
        return state.means

    def _result(self, state, info, target, rng_key) -> InferenceResult:
        scaled = state.scale is not None
        keys = ("isomix_means", "isomix_variances") + (("isomix_scale_tril",) if scaled else ())
        return self._density_result(state, info, target, rng_key, fit=_isomix_fit,
                                    sample=_isomix_sample, log_q=_isomix_log_q,
                                    latent=_isomix_latent_scaled if scaled else _isomix_latent,
                                    guide_params=keys)


def _isomix_fit(state):
    fitted = averaged(state)
    out = {"isomix_means": fitted.means, "isomix_variances": fitted.variances}
    if fitted.scale is not None:
        # component covariance eps_i A A^T: its Cholesky factor for the guide
        out.update(isomix_scale_tril=lower_factor(fitted.scale), scale=fitted.scale,
                   inv=state.inv_scale, log_det=state.log_det_scale)
    return out


def _isomix_sample(fitted, key, num_samples):
    return sample_mixture(key, fitted["isomix_means"], fitted["isomix_variances"], num_samples,
                          fitted.get("scale"))


def _isomix_log_q(fitted, z):
    means, variances = fitted["isomix_means"], fitted["isomix_variances"]
    if "inv" not in fitted:
        return mixture_log_density(z, means, variances)
    inv = fitted["inv"]
    return mixture_log_density(z @ inv.T, means @ inv.T, variances) - fitted["log_det"]


def _isomix_latent(dim):
    means = numpyro.param("isomix_means", jnp.zeros((1, dim)))
    variances = numpyro.param("isomix_variances", jnp.ones(1))
    return dist.MixtureSameFamily(
        dist.Categorical(logits=jnp.zeros(means.shape[0])),
        dist.Normal(means, jnp.sqrt(variances)[:, None]).to_event(1))


def _isomix_latent_scaled(dim):
    means = numpyro.param("isomix_means", jnp.zeros((1, dim)))
    variances = numpyro.param("isomix_variances", jnp.ones(1))
    scale_tril = numpyro.param("isomix_scale_tril", jnp.eye(dim))
    return dist.MixtureSameFamily(
        dist.Categorical(logits=jnp.zeros(means.shape[0])),
        dist.MultivariateNormal(means, scale_tril=jnp.sqrt(variances)[:, None, None] * scale_tril))
