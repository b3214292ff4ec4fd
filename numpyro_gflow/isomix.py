"""Variational inference with a uniform mixture of isotropic Gaussians (IBW and MD updates).

Petit-Talamon, Lambert & Korba, "Variational Inference with Mixtures of Isotropic Gaussians"
(NeurIPS 2025). ``q = (1/N) sum_i N(m_i, eps_i I)`` on NumPyro's unconstrained space, O(N d)
memory. With ``B`` draws ``x_ib = m_i + sqrt(eps_i) xi_ib`` per component and
``delta(x) = grad log q(x) - grad log pi(x)``:

    g_i = mean_b delta(x_ib),   s_i = mean_b <delta(x_ib), x_ib - m_i>
    means:  m_i <- m_i - h g_i                                 (Wasserstein gradient step)
    IBW:    eps_i <- eps_i (1 - h s_i / (d eps_i))^2             (isotropic Bures-Wasserstein)
    MD:     eps_i <- eps_i exp(-h s_i / (d eps_i))                (entropic mirror descent)

``grad log q`` is the score of the *whole* mixture, ``-sum_j r_j(x) (x - m_j) / eps_j`` with
responsibilities ``r = softmax_j log N(x; m_j, eps_j I)`` (log-sum-exp, never density ratios):
that coupling keeps components apart. For ``pi = N(0, s I)`` and ``N = 1`` both variance
updates have the fixed point ``eps = s``.

IBW needs ``h s_i / (d eps_i) < 1``; where it is not, the factor is clipped at 0.1 (the
variance shrinks at most 100-fold in a step) and the step is counted in the trace
(``ibw_clipped``). MD stays positive by construction. Component weights stay uniform: the
paper's algorithm does not learn them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer.initialization import init_to_uniform

from numpyro_gflow._validate import positive_float_or, positive_int
from numpyro_gflow.engine import ParticleEngine, Target
from numpyro_gflow.result import InferenceResult, latent_guide

__all__ = ["IsoMixState", "IsoMixInfo", "IsoMixSchedule", "make_schedule", "init", "step",
           "rewhiten", "averaged", "mixture_covariance", "mixture_log_density", "mixture_score",
           "sample_mixture", "IsoGaussianMixtureVI"]


class IsoMixState(NamedTuple):
    particles: jax.Array     # (N, d) component means (named like the particle engines' field)
    variances: jax.Array     # (N,) isotropic variances eps_i
    step_size: jax.Array     # h (in the state: set from the data at init, never baked in)
    rng_key: jax.Array
    scale: jax.Array | None = None       # (d, d) A of the optional preconditioner z = A u
    inv_scale: jax.Array | None = None   # A^{-1}
    log_det_scale: jax.Array | None = None
    schedule: "IsoMixSchedule | None" = None


class IsoMixSchedule(NamedTuple):
    """Optional re-estimation of the preconditioner and iterate averaging (see `step`)."""

    count: jax.Array          # steps taken
    rewhiten_at: jax.Array    # (k,) after these steps A is re-estimated from q's covariance
    average_from: jax.Array   # iterates after this step enter the running average
    mean_sum: jax.Array       # (N, d) sum of averaged means (z coordinates)
    variance_sum: jax.Array   # (N,) sum of averaged variances (u coordinates of the final A)
    num_averaged: jax.Array


def make_schedule(means, rewhiten_at=(), average_from=None) -> IsoMixSchedule:
    """A schedule for `init`: ``rewhiten_at`` step counts (needs a preconditioner), and iterates
    after step ``average_from`` averaged (None: no averaging)."""
    big = jnp.iinfo(jnp.int32).max
    return IsoMixSchedule(
        jnp.asarray(0, jnp.int32), jnp.asarray(tuple(rewhiten_at) or (-1,), jnp.int32),
        jnp.asarray(big if average_from is None else average_from, jnp.int32),
        jnp.zeros_like(means), jnp.zeros(means.shape[:1], means.dtype), jnp.asarray(0, jnp.int32))


class IsoMixInfo(NamedTuple):
    elbo: jax.Array              # Monte Carlo ELBO of q at the start of the step
    mean_variance: jax.Array
    ibw_clipped: jax.Array       # components whose IBW factor was clipped this step


def _component_log_densities(x, means, variances):
    """log N(x; m_j, eps_j I) for all j: (..., N)."""
    d = means.shape[-1]
    sq = jnp.sum((x[..., None, :] - means) ** 2, -1)
    return -0.5 * (sq / variances + d * jnp.log(2 * jnp.pi * variances))


def mixture_log_density(x, means, variances):
    """log q(x) of the uniform mixture, by log-sum-exp."""
    n = means.shape[0]
    return jax.nn.logsumexp(_component_log_densities(x, means, variances), -1) - jnp.log(n)


def mixture_score(x, means, variances):
    """grad log q(x) = -sum_j r_j(x) (x - m_j) / eps_j with softmax responsibilities."""
    r = jax.nn.softmax(_component_log_densities(x, means, variances), -1)       # (..., N)
    return -jnp.sum(r[..., None] * (x[..., None, :] - means) / variances[:, None], -2)


def sample_mixture(rng_key, means, variances, num_samples, scale=None):
    """Draws of q; with ``scale`` A, component i is N(m_i, eps_i A A^T)."""
    k_comp, k_noise = jax.random.split(rng_key)
    comp = jax.random.randint(k_comp, (num_samples,), 0, means.shape[0])
    noise = jax.random.normal(k_noise, (num_samples, means.shape[1]), means.dtype)
    if scale is not None:
        noise = noise @ scale.T
    return means[comp] + jnp.sqrt(variances[comp])[:, None] * noise


def init(means, variances, step_size, rng_key, scale=None, schedule=None) -> IsoMixState:
    """``means`` in NumPyro's unconstrained space; with ``scale`` (a (d, d) matrix A), the flow
    runs on the isotropic family in the coordinates u = A^{-1} z (``variances`` are those of u).
    ``schedule`` (`make_schedule`): re-estimation of A and iterate averaging."""
    variances = jnp.broadcast_to(jnp.asarray(variances, means.dtype), means.shape[:1])
    if scale is None:
        if schedule is not None and int(jnp.max(schedule.rewhiten_at)) >= 0:
            raise ValueError("re-estimating the preconditioner needs a preconditioner (scale)")
        return IsoMixState(means, variances, jnp.asarray(step_size, means.dtype), rng_key,
                           schedule=schedule)
    scale = jnp.asarray(scale, means.dtype)
    log_det = jnp.linalg.slogdet(scale)[1]
    return IsoMixState(means, variances, jnp.asarray(step_size, means.dtype), rng_key,
                       scale, jnp.linalg.inv(scale), log_det, schedule)


def mixture_covariance(state: IsoMixState) -> jax.Array:
    """Covariance of q in z: mean_i eps_i A A^T + the covariance of the component means."""
    m = state.particles
    spread = jnp.cov(m, rowvar=False, bias=True).reshape(m.shape[1], m.shape[1])
    eps = jnp.mean(state.variances)
    inner = eps * (state.scale @ state.scale.T) if state.scale is not None else eps * jnp.eye(m.shape[1], dtype=m.dtype)
    return inner + spread


def rewhiten(state: IsoMixState) -> IsoMixState:
    """A <- Sigma_q^{1/2} (symmetric root of q's covariance); each component N(m_i, eps_i A A^T)
    is replaced by the isotropic one in the new u closest in KL(new || old): variance
    eps_i d / tr(M^{-1}), M = A'^{-1} A A^T A'^{-T}. Means (kept in z) do not move; the step
    shrinks by ||A^{-1} A'||^2 where that exceeds 1."""
    cov = mixture_covariance(state)
    lam, vec = jnp.linalg.eigh(0.5 * (cov + cov.T))
    lam = jnp.maximum(lam, 1e-6 * jnp.max(lam) + 1e-30)
    new = (vec * jnp.sqrt(lam)) @ vec.T
    new_inv = (vec / jnp.sqrt(lam)) @ vec.T
    B = state.inv_scale @ new                           # M^{-1} = B^T B with B = A^{-1} A'
    d = cov.shape[0]
    factor = d / jnp.sum(B * B)
    # the target's curvature in the new u is at most ||B||^2 times that in the old one: shrink
    # the step by as much (never grow it), so a step that was stable stays stable. Matters when
    # q spans several modes and its covariance is much wider than one component's.
    stretch = jnp.maximum(jnp.linalg.norm(B, 2) ** 2, 1.0)
    return state._replace(variances=state.variances * factor, scale=new, inv_scale=new_inv,
                          log_det_scale=0.5 * jnp.sum(jnp.log(lam)),
                          step_size=state.step_size / stretch)


def step(state: IsoMixState, score_fn, num_mc_samples: int,
         variance_update: str) -> tuple[IsoMixState, IsoMixInfo]:
    """One step of the paper's flow; with a preconditioner, the same step on the target pushed
    to u = A^{-1} z (log density log pi(A u) + log|det A|, score A^T grad log pi(A u)).

    With a schedule: after the steps listed in ``rewhiten_at`` A is re-estimated from q's own
    covariance (`rewhiten`), and iterates after ``average_from`` are summed so the result can
    report their average (Polyak-Ruppert: removes the constant step's Monte Carlo jitter)."""
    sched = state.schedule
    new, info = _preconditioned_step(state, score_fn, num_mc_samples, variance_update)
    if sched is None:
        return new, info
    count = sched.count + 1
    if new.scale is not None:
        new = jax.lax.cond(jnp.any(sched.rewhiten_at == count), rewhiten, lambda s: s, new)
    take = count > sched.average_from
    sched = sched._replace(
        count=count,
        mean_sum=sched.mean_sum + jnp.where(take, new.particles, 0.0),
        variance_sum=sched.variance_sum + jnp.where(take, new.variances, 0.0),
        num_averaged=sched.num_averaged + take.astype(jnp.int32))
    return new._replace(schedule=sched), info


def averaged(state: IsoMixState) -> IsoMixState:
    """The state with means and variances replaced by their running averages (if any)."""
    sched = state.schedule
    if sched is None:
        return state
    n = jnp.maximum(sched.num_averaged, 1)
    keep = sched.num_averaged > 0
    return state._replace(particles=jnp.where(keep, sched.mean_sum / n, state.particles),
                          variances=jnp.where(keep, sched.variance_sum / n, state.variances))


def _preconditioned_step(state, score_fn, num_mc_samples, variance_update):
    if state.scale is None:
        return _step(state, score_fn, num_mc_samples, variance_update)
    A = state.scale

    def score_u(u, key):
        log_pi, grad = score_fn(u @ A.T, key)
        return log_pi + state.log_det_scale, grad @ A

    u_state = state._replace(particles=state.particles @ state.inv_scale.T)
    new, info = _step(u_state, score_u, num_mc_samples, variance_update)
    return new._replace(particles=new.particles @ A.T), info


def _step(state: IsoMixState, score_fn, num_mc_samples: int,
          variance_update: str) -> tuple[IsoMixState, IsoMixInfo]:
    step_size = state.step_size
    rng_key, noise_key, batch_key = jax.random.split(state.rng_key, 3)
    m, eps = state.particles, state.variances
    N, d = m.shape
    xi = jax.random.normal(noise_key, (N, num_mc_samples, d), m.dtype)
    x = m[:, None, :] + jnp.sqrt(eps)[:, None, None] * xi                         # (N, B, d)
    log_pi, score_pi = score_fn(x.reshape(N * num_mc_samples, d), batch_key)
    log_pi, score_pi = log_pi.reshape(N, num_mc_samples), score_pi.reshape(N, num_mc_samples, d)
    delta = mixture_score(x, m, eps) - score_pi
    g = jnp.mean(delta, 1)
    s = jnp.mean(jnp.sum(delta * (x - m[:, None, :]), -1), 1)
    ratio = step_size * s / (d * eps)
    if variance_update == "ibw":
        factor = 1.0 - ratio
        clipped = factor < 0.1
        new_eps = eps * jnp.maximum(factor, 0.1) ** 2
    else:
        clipped = jnp.zeros_like(ratio, bool)
        new_eps = eps * jnp.exp(-ratio)
    elbo = jnp.mean(log_pi - mixture_log_density(x, m, eps))
    info = IsoMixInfo(elbo, jnp.mean(eps), jnp.sum(clipped))
    return state._replace(particles=m - step_size * g, variances=new_eps, rng_key=rng_key), info


class IsoGaussianMixtureVI(ParticleEngine):
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
            the flow starts (default 200; 0 for none); each component climbs its own hill, which helps
            components start on different modes.
        init_strategy: per-component NumPyro init strategy for the means (default
            ``init_to_uniform``: U(-2, 2) in the unconstrained space; the paper draws means
            from U(-5, 5)^d, i.e. ``init_to_uniform(radius=5)``).
        preconditioner: ``None`` (default: the paper's algorithm in NumPyro's unconstrained
            coordinates z). Otherwise a fixed linear map z = A u, and the paper's algorithm runs
            unchanged on the target pushed to u; the fitted family is then a uniform mixture
            of N(m_i, eps_i A A^T) in z, i.e. isotropic in u, not in z. This is an extension
            (the paper's family is isotropic in whatever coordinates it is given), costing
            O(d^2) memory and O(N B d^2) per step. ``"laplace"``: A = H^{-1/2} with H the
            Hessian of -log pi (d Hessian-vector products, eigenvalues floored at 1e-6 of the
            largest in absolute value) at the highest of the climbed initial means; a (d,)
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

    objective = "elbo"
    min_particles = 1

    def __init__(self, model, *, num_components: int = 10, variance_update: str = "ibw",
                 step_size="auto", num_mc_samples: int = 10, initial_variance="laplace",
                 map_steps: int = 200, init_strategy=init_to_uniform, preconditioner=None,
                 average_last: float = 0.0):
        super().__init__(model, num_particles=positive_int("num_components", num_components, 1),
                         init_strategy=init_strategy)
        if variance_update not in ("ibw", "md"):
            raise ValueError(f"variance_update must be 'ibw' or 'md', got {variance_update!r}")
        self.variance_update = variance_update
        self.step_size = positive_float_or("step_size", step_size, ("auto",))
        self.num_mc_samples = positive_int("num_mc_samples", num_mc_samples)
        self.initial_variance = positive_float_or("initial_variance", initial_variance, ("laplace",))
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
    def num_components(self):
        return self.num_particles

    def _core_init(self, particles, rng_key, target: Target):
        args, kwargs = target.model_args, target.model_kwargs
        log_p = lambda z: target.bridge.log_density(z, args, kwargs)  # noqa: E731
        if self.map_steps:
            particles = _climb(log_p, particles, self.map_steps)
        scale = self._scale(log_p, particles)
        if scale is not None:
            # curvatures (for the initial variances and the auto step) of the target in u
            log_p_z = log_p
            log_p = lambda u: log_p_z(scale @ u)  # noqa: E731
        if self.initial_variance == "laplace" or self.step_size == "auto":
            u = particles if scale is None else particles @ jnp.linalg.inv(scale).T
            trace, top = _curvature(log_p, u, rng_key)
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
        return init(particles, variances, h, rng_key, scale, self._schedule(particles, target.num_steps))

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
                raise ValueError(f"preconditioner has shape {p.shape}, expected ({d},) or ({d}, {d})")
            return jnp.diag(p) if p.ndim == 1 else p
        center = particles[jnp.argmax(jax.vmap(log_p)(particles))]
        lam, vec = floored_curvature(log_p, center)
        return (vec * lam ** -0.5) @ vec.T

    def _core_step(self, state, score_fn):
        return step(state, score_fn, self.num_mc_samples, self.variance_update)

    def _result(self, state, info, bridge, args, kwargs, rng_key) -> InferenceResult:
        fitted = averaged(state)
        means, variances, scale = fitted.particles, fitted.variances, fitted.scale
        params = {"isomix_means": means, "isomix_variances": variances}
        if scale is None:
            log_q = lambda z: mixture_log_density(z, means, variances)  # noqa: E731
            latent = _isomix_latent
        else:
            # component covariance eps_i A A^T: its Cholesky factor for the guide
            params["isomix_scale_tril"] = jnp.linalg.cholesky(scale @ scale.T)
            inv, log_det = state.inv_scale, state.log_det_scale
            u_means = means @ inv.T

            def log_q(z):
                return mixture_log_density(z @ inv.T, u_means, variances) - log_det

            latent = _isomix_latent_scaled

        def sampler(key, num_samples):
            return sample_mixture(key, means, variances, num_samples, scale)

        draws = sampler(jax.random.fold_in(rng_key, 1), 1000)
        return InferenceResult(
            type(self).__name__, bridge, args, kwargs, draws, info._asdict(), state=state,
            objective=self.objective, sampler=sampler, log_q=log_q,
            guide=latent_guide(bridge, latent), params=params,
        )


def _climb(log_p, z, num_steps, learning_rate=0.05):
    """Adam ascent of log p from each initial mean (one MAP search per component)."""
    import optax

    opt = optax.adam(learning_rate)
    grad = jax.vmap(jax.grad(lambda x: -log_p(x)))

    def body(carry, _):
        z, state = carry
        updates, state = opt.update(grad(z), state, z)
        return (optax.apply_updates(z, updates), state), None

    (z, _), _ = jax.lax.scan(body, (z, opt.init(z)), None, length=num_steps)
    return z


def hessian(log_p, x):
    """Dense Hessian of -log p at x from d Hessian-vector products (forward over reverse)."""
    hvp = lambda v: jax.jvp(jax.grad(lambda y: -log_p(y)), (x,), (v,))[1]  # noqa: E731
    return jax.vmap(hvp)(jnp.eye(x.shape[0], dtype=x.dtype))


def floored_curvature(log_p, x):
    """Eigen-decomposition ``(lam, vec)`` of the Hessian of -log p at x with each eigenvalue
    replaced by its absolute value, floored at 1e-6 of the largest: a valid precision matrix
    ``vec diag(lam) vec^T`` also where log p is not concave (its H^{-1/2} whitens)."""
    h = hessian(log_p, x)
    lam, vec = jnp.linalg.eigh(0.5 * (h + h.T))
    return jnp.maximum(jnp.abs(lam), 1e-6 * jnp.max(jnp.abs(lam)) + 1e-30), vec


def _curvature(log_p, z, rng_key, iterations: int = 30):
    """Per point: tr(-grad^2 log p) (Hutchinson-free: exact via d HVPs would cost d; we use the
    diagonal by forward-over-reverse on basis vectors for d <= 200, else 20 Rademacher probes)
    and the largest eigenvalue by power iteration."""
    d = z.shape[1]
    hvp = lambda x, v: jax.jvp(jax.grad(lambda y: -log_p(y)), (x,), (v,))[1]  # noqa: E731

    def one(x, key):
        if d <= 200:
            tr = jnp.sum(jax.vmap(lambda e: e @ hvp(x, e))(jnp.eye(d, dtype=x.dtype)))
        else:
            probes = jax.random.rademacher(key, (20, d), x.dtype)
            tr = jnp.mean(jax.vmap(lambda v: v @ hvp(x, v))(probes))
        v = jax.random.normal(jax.random.fold_in(key, 1), (d,), x.dtype)

        def power(v, _):
            w = hvp(x, v)
            return w / (jnp.linalg.norm(w) + 1e-30), None

        v, _ = jax.lax.scan(power, v / jnp.linalg.norm(v), None, length=iterations)
        top = jnp.abs(v @ hvp(x, v))
        return tr, top

    return jax.vmap(one)(z, jax.random.split(rng_key, z.shape[0]))


def smallest_curvature(log_p, x, top, rng_key, iterations: int = 100):
    """Smallest eigenvalue of ``-grad^2 log p(x)`` by power iteration on ``top I - H``."""
    hvp = lambda v: jax.jvp(jax.grad(lambda y: -log_p(y)), (x,), (v,))[1]  # noqa: E731
    v = jax.random.normal(rng_key, x.shape, x.dtype)

    def power(v, _):
        w = top * v - hvp(v)
        return w / (jnp.linalg.norm(w) + 1e-30), None

    v, _ = jax.lax.scan(power, v / jnp.linalg.norm(v), None, length=iterations)
    return v @ hvp(v)


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
