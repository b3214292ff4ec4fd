"""Forward-backward Gaussian variational inference in the Bures-Wasserstein space (FB-GVI).

Diao, Balasubramanian, Chewi & Salim, "Forward-backward Gaussian variational inference via JKO
in the Bures-Wasserstein space" (ICML 2023). ``KL(q || pi)`` for ``q = N(m, S)`` splits into the
potential energy ``E_q[V]`` (smooth, ``V = -log pi``) and the negative entropy (not smooth). One
step, with ``h`` the step size:

    forward (gradient on the potential):  m' = m - h E[grad V],  M = I - h E[grad^2 V],
                                           S' = M S M^T
    backward (JKO of the entropy, closed form):  m_{k+1} = m',
                                           S_{k+1} = (S' + 2h I + [S'(S' + 4h I)]^{1/2}) / 2

``S'`` and ``S' + 4h I`` commute, so one symmetric eigen-decomposition ``S' = U diag(l) U^T``
gives ``S_{k+1} = U diag((l + 2h + sqrt(l^2 + 4 h l)) / 2) U^T``: every eigenvalue is at least
``h``, so the covariance stays SPD by construction (``S'`` is symmetrised first; float32 safe).

Expectations under ``N(m, S)``, ``x = m + C u`` with ``S = C C^T``:

* deterministic: a fixed set of ``num_mc_samples`` antithetic standard normal draws, whitened so
  their mean is 0 and second moment I exactly, the same at every step (so the iteration is a
  deterministic map, and both expectations are exact for a Gaussian target);
* stochastic (the paper's SFB-GVI): one fresh draw per step and the decreasing step
  ``h_k = h / (1 + alpha h k)`` -- constant until ``k ~ beta / alpha`` (the condition number),
  then ``1 / (alpha k)`` -- with ``alpha`` the smallest curvature at the start (power iteration on
  ``beta I - H``): the O(1/k) schedule of the paper's strongly log-concave theorem.

Hessian ``E[grad^2 V]``: ``"exact"`` (autodiff, d Hessian-vector products per draw: O(d) gradient
costs) or ``"stein"``, the first-order estimator ``C^{-T} E[u grad V(m + C u)^T]`` (Stein's lemma;
symmetrised) that needs gradients only -- note the inverse Cholesky factor ``C^{-T}``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "CAP_MARGIN",
    "FBGVIInfo",
    "FBGVIState",
    "averaged",
    "bw_sgd_step",
    "init",
    "jko_entropy",
    "moment_matched_draws",
    "step",
]


class FBGVIState(NamedTuple):
    mean: jax.Array         # (d,) the Gaussian's mean
    cov: jax.Array          # (d, d) covariance
    count: jax.Array
    step_size: jax.Array    # h (the cap of the stochastic schedule)
    alpha: jax.Array        # curvature for the stochastic schedule
    draws: jax.Array        # (B, d) fixed antithetic draws of the deterministic variant
    rng_key: jax.Array
    avg_mean: jax.Array     # (d,) the iterates' running average (`step`'s ``average``), or
    avg_cov: jax.Array      # (d, d) the last iterate where the step does not average
    change: jax.Array       # the last step's move, in sds of the Gaussian (`step`'s ``tol``)
    calm: jax.Array         # consecutive steps that met `step`'s ``tol``
    last: "FBGVIInfo"       # the last step's info, repeated by the steps `step` skips


class FBGVIInfo(NamedTuple):
    elbo: jax.Array         # estimate of E_q[log pi] + entropy at the start of the step
    step_size: jax.Array
    min_eigenvalue: jax.Array


def jko_entropy(cov, h):
    """The backward step: JKO of the negative entropy from ``cov`` with step ``h`` (closed form)."""
    lam, U = jnp.linalg.eigh(0.5 * (cov + cov.T))
    lam = jnp.maximum(lam, 0.0)
    new = 0.5 * (lam + 2 * h + jnp.sqrt(lam**2 + 4 * h * lam))
    return (U * new) @ U.T, jnp.min(new)


def _gaussian_entropy(chol):
    d = chol.shape[0]
    return 0.5 * d * (1 + jnp.log(2 * jnp.pi)) + jnp.sum(jnp.log(jnp.abs(jnp.diag(chol))))


def init(mean, cov, step_size, alpha, draws, rng_key) -> FBGVIState:
    dtype = mean.dtype
    zero = jnp.zeros((), dtype)     # (change 0: no step yet, no contraction rate)
    return FBGVIState(mean, cov, jnp.zeros((), jnp.int32), jnp.asarray(step_size, dtype),
                      jnp.asarray(alpha, dtype), draws, rng_key, mean, cov,
                      zero, jnp.zeros((), jnp.int32), FBGVIInfo(zero, zero, zero))


#: consecutive steps that must meet `step`'s ``tol`` before the iteration counts as converged
CALM_STEPS = 5

#: the deterministic variant's local cap is ``h <= CAP_MARGIN / |lambda|_max`` of the step's
#: Hessian estimate (`step`'s ``local_cap``). At the cap's edge (``h |lambda|_max = 1``, M
#: singular in that direction) the map locked into 2-cycles, since the estimate moves with the
#: covariance that h makes: breast-cancer logistic regression, h alternating 0.80 / 0.46 and
#: the mean jumping 0.08-0.13 posterior sd at every step, forever; eight schools never settled
#: in 2000 steps. With a margin of 0.8 both converged on the draws tried then (26 and ~500
#: steps), but not on all: on the same regression with the run keys 0-7 the map still cycled
#: for all 1000 steps on one (h alternating 0.58 / 0.37; also with h held at the smaller of two
#: successive caps, 0.43) and took 207-260 steps on two more. With 0.5 all eight converge in
#: 33-37 steps and eight schools in ~700 (457 at 0.8). The fixed point does not depend on h
#: (<= 1 / beta), only the speed does
CAP_MARGIN = 0.5


def averaged(state: FBGVIState, mean, cov, power: float | None):
    """The running averages after an iterate ``(mean, cov)`` (the ``count``-th, counted from
    1): polynomial-decay averaging (Shamir & Zhang 2013), ``avg_k = avg_{k-1} + w_k (x_k -
    avg_{k-1})`` with ``w_k = (power + 1) / (k + power)``: iterate ``j`` weighted like
    ``j (j + 1) ... (j + power - 1) ~ j^power`` (integer power): with ``power = 3`` the last
    half of a long run carries 94 % of the weight, and the
    weights do not depend on the run's length (a run continued from its state averages as one
    long run). ``power=None``: no averaging (the averages are the last iterate)."""
    if power is None:
        return state._replace(avg_mean=mean, avg_cov=cov)
    k = state.count.astype(mean.dtype)
    w = (power + 1.0) / (k + power)
    return state._replace(avg_mean=state.avg_mean + w * (mean - state.avg_mean),
                          avg_cov=state.avg_cov + w * (cov - state.avg_cov))


def _estimates(state: FBGVIState, score_fn, hvp_fn, hessian: str, stochastic: bool):
    """What a step of FB-GVI (and of BW-SGD) needs at ``N(m, S)``: the draws' log densities,
    the mean gradient of V and the Hessian estimate, and the step ``h`` of the schedule."""
    step_size, alpha, draws = state.step_size, state.alpha, state.draws
    rng_key, draw_key, batch_key = jax.random.split(state.rng_key, 3)
    m, S = state.mean, state.cov
    d = m.shape[0]
    C = jnp.linalg.cholesky(S)
    u = jax.random.normal(draw_key, draws.shape, m.dtype) if stochastic else draws
    x = m + u @ C.T
    log_pi, score = score_fn(x, batch_key)            # grad V = -score
    grad_v = -score
    if hessian == "exact":
        eye = jnp.eye(d, dtype=m.dtype)
        hess = jax.vmap(lambda xi: jax.vmap(lambda e: hvp_fn(xi, e, batch_key))(eye))(x)
        e_hess = jnp.mean(hess, 0)
    else:   # Stein / Price: E[grad^2 V] = C^{-T} E[u grad V^T]
        moment = (u.T @ grad_v) / u.shape[0]
        e_hess = jax.scipy.linalg.solve_triangular(C.T, moment, lower=False)
    e_hess = 0.5 * (e_hess + e_hess.T)
    if stochastic:
        h = jnp.minimum(step_size, 1.0 / (alpha * (state.count + 1.0 / (alpha * step_size))))
    else:
        h = jnp.asarray(step_size, m.dtype)
    return m, S, C, log_pi, jnp.mean(grad_v, 0), e_hess, h, rng_key


def step(state: FBGVIState, score_fn, hvp_fn, hessian: str,
         stochastic: bool, local_cap: bool = False,
         average: float | None = None, tol: float | None = None) -> tuple[FBGVIState, FBGVIInfo]:
    """One FB-GVI step. ``local_cap``: also keep ``h <= 1 / |lambda|_max`` of this step's
    Hessian estimate (the paper's ``h <= 1 / beta`` checked where the draws are; inactive on a
    ``beta``-smooth log-concave target started with ``h = 1 / beta``); the deterministic
    variant keeps ``h <= CAP_MARGIN / |lambda|_max``. ``average``: the power
    of `averaged`'s iterate averaging (``avg_mean``, ``avg_cov``); None: none.

    ``tol`` (deterministic variant only; None: off): stop at the fixed point. The deterministic
    iteration is a fixed map (the same draws every step), converging linearly; a step's move
    ``delta`` (the largest change of the mean and of the covariance, in sds of the current
    Gaussian: ``C^{-1} dm`` and ``C^{-1} dS C^{-T}``) and the contraction ``r = delta /
    delta_prev`` bound the distance left by ``delta r / (1 - r)``. Once that is below ``tol``
    (or ``delta`` below ``tol / 100``, float32's floor) for `CALM_STEPS` steps in a row, every
    later step returns the state unchanged and repeats the last info, at no cost (``lax.cond``)."""
    if tol is None or stochastic:
        return _step(state, score_fn, hvp_fn, hessian, stochastic, local_cap, average, None)

    def skip():
        return state, state.last

    return jax.lax.cond(state.calm >= CALM_STEPS, skip,
                        lambda: _step(state, score_fn, hvp_fn, hessian, stochastic, local_cap,
                                      average, tol))


def _step(state, score_fn, hvp_fn, hessian, stochastic, local_cap, average, tol):
    m, S, C, log_pi, mean_grad_v, e_hess, h, rng_key = _estimates(state, score_fn, hvp_fn,
                                                                   hessian, stochastic)
    d = m.shape[0]
    if local_cap:
        # curvature the start's beta missed (not log-concave, not globally smooth: eight
        # schools' funnel) makes |I - h H| > 1, and S' = M S M^T grows without bound
        top = jnp.max(jnp.abs(jnp.linalg.eigvalsh(e_hess)))
        c = 1.0 if stochastic else CAP_MARGIN
        h = jnp.where(jnp.isfinite(top) & (h * top > c), c / top, h)
    m_new = m - h * mean_grad_v
    M = jnp.eye(d, dtype=m.dtype) - h * e_hess
    S_new, min_eig = jko_entropy(M @ S @ M.T, h)
    info = FBGVIInfo(jnp.mean(log_pi) + _gaussian_entropy(C), h, min_eig)
    new = state._replace(mean=m_new, cov=S_new, count=state.count + 1, rng_key=rng_key)
    if tol is not None:
        solve = jax.scipy.linalg.solve_triangular
        dm = solve(C, m_new - m, lower=True)
        dS = solve(C, solve(C, S_new - S, lower=True).T, lower=True)
        delta = jnp.maximum(jnp.max(jnp.abs(dm)), jnp.max(jnp.abs(dS)))
        r = delta / state.change
        left = jnp.where(r < 1.0, delta * r / (1.0 - r), jnp.inf)   # (r nan/inf: first step)
        calm = (left <= tol) | (delta <= 0.01 * tol)
        new = new._replace(change=delta, calm=jnp.where(calm, state.calm + 1, 0), last=info)
    return averaged(new, m_new, S_new, average), info


def bw_sgd_step(state: FBGVIState, score_fn, hvp_fn, hessian: str, stochastic: bool) -> FBGVIState:
    """The FB-GVI paper's baseline, Bures-Wasserstein SGD (Lambert et al. 2022), written like
    `step` (same draws, random stream, Hessian estimator and step schedule) but with the
    entropy's gradient explicit, ``M = I - h (E[grad^2 V] - S^{-1})``, and no backward (JKO)
    step: it loses definiteness where ``h`` exceeds ``1 / beta`` (benchmarks/experiments)."""
    m, S, C, _, mean_grad_v, e_hess, h, rng_key = _estimates(state, score_fn, hvp_fn, hessian,
                                                             stochastic)
    eye = jnp.eye(m.shape[0], dtype=m.dtype)
    S_inv = jax.scipy.linalg.cho_solve((C, True), eye)
    M = eye - h * (e_hess - 0.5 * (S_inv + S_inv.T))
    S_new = M @ S @ M.T
    m_new, S_new = m - h * mean_grad_v, 0.5 * (S_new + S_new.T)
    return state._replace(mean=m_new, cov=S_new, count=state.count + 1, rng_key=rng_key,
                          avg_mean=m_new, avg_cov=S_new)


def moment_matched_draws(key, num, d):
    """Antithetic standard normal draws whitened to mean 0 and identity second moment exactly
    (when ``num >= 2d``), so both expectations are exact for a Gaussian target."""
    half = jax.random.normal(key, (max(num // 2, 1), d))
    u = jnp.concatenate([half, -half])
    if u.shape[0] >= 2 * d:
        L = jnp.linalg.cholesky(u.T @ u / u.shape[0])
        u = jax.scipy.linalg.solve_triangular(L, u.T, lower=True).T
    return u
