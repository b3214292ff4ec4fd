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

__all__ = [
    "IsoMixState",
    "IsoMixInfo",
    "IsoMixSchedule",
    "make_schedule",
    "init",
    "step",
    "rewhiten",
    "averaged",
    "mixture_covariance",
    "mixture_log_density",
    "mixture_score",
    "sample_mixture",
]


class IsoMixState(NamedTuple):
    means: jax.Array         # (N, d) component means
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
    m = state.means
    spread = jnp.cov(m, rowvar=False, bias=True).reshape(m.shape[1], m.shape[1])
    eps = jnp.mean(state.variances)
    inner = (eps * (state.scale @ state.scale.T) if state.scale is not None
             else eps * jnp.eye(m.shape[1], dtype=m.dtype))
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
        mean_sum=sched.mean_sum + jnp.where(take, new.means, 0.0),
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
    return state._replace(means=jnp.where(keep, sched.mean_sum / n, state.means),
                          variances=jnp.where(keep, sched.variance_sum / n, state.variances))


def _preconditioned_step(state, score_fn, num_mc_samples, variance_update):
    if state.scale is None:
        return _step(state, score_fn, num_mc_samples, variance_update)
    A = state.scale

    def score_u(u, key):
        log_pi, grad = score_fn(u @ A.T, key)
        return log_pi + state.log_det_scale, grad @ A

    u_state = state._replace(means=state.means @ state.inv_scale.T)
    new, info = _step(u_state, score_u, num_mc_samples, variance_update)
    return new._replace(means=new.means @ A.T), info


def _step(state: IsoMixState, score_fn, num_mc_samples: int,
          variance_update: str) -> tuple[IsoMixState, IsoMixInfo]:
    step_size = state.step_size
    rng_key, noise_key, batch_key = jax.random.split(state.rng_key, 3)
    m, eps = state.means, state.variances
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
    return state._replace(means=m - step_size * g, variances=new_eps, rng_key=rng_key), info
