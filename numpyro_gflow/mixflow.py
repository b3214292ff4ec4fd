"""MixFlows: mixed variational flows from uncorrected Hamiltonian dynamics.

Xu, Chen & Campbell, "MixFlows: principled variational inference via mixed flows" (ICML 2023).
The state is augmented to ``z = (x, rho, u)``: ``x`` in NumPyro's unconstrained space, a
momentum ``rho`` with standard Laplace density ``m`` (as in the authors' code: with Laplace
momentum the position moves by ``+-eps`` per leapfrog step whatever ``|rho|`` is, so round-off
is not amplified, and forward-then-inverse maps stay exact for thousands of steps; Gaussian
momentum loses invertibility within tens of steps), and an auxiliary ``u`` in ``[0, 1)``.
The augmented target is ``pi(x) m(rho) 1[u in [0, 1)]``.

One flow map ``T`` = ``num_leapfrog`` uncorrected leapfrog steps (no accept/reject), then the
deterministic momentum refreshment, coordinate by coordinate::

    rho_i <- F^{-1}((F(rho_i) + xi(x_i, u)) mod 1),   xi(x, u) = (sin(2 x + u) + 1) / 2
    u     <- (u + pi / 16) mod 1          (after each coordinate, as the authors' code)

with ``F`` the Laplace CDF. Leapfrog steps and the shift of ``u`` preserve volume; the refresh
has ``log |J| = sum_i log m(rho_i) - log m(rho_i')``. The MixFlow is the uniform mixture of
``T^n q0`` over ``n = 0 .. N-1`` (``N = flow_length``), ``q0 = N(loc, diag(scale^2)) x m x U[0, 1)``:

* sampling: ``K ~ U{0..N-1}``, ``z0 ~ q0``, return ``T^K z0``;
* density: ``q_N(z) = (1/N) sum_{n<N} q0(T^{-n} z) |J_{T^{-n}}(z)|``, one backward pass with a
  running log-sum-exp (memory independent of ``N``);
* ELBO: ``E_{z0 ~ q0} (1/N) sum_{n<N} [log pibar(T^n z0) - log q_N(T^n z0)]`` (unbiased). One
  trajectory ``T^{-(N-1)} z0 .. T^{N-1} z0`` gives all ``N`` terms: ``log q_N(z_n)`` is a
  window log-sum-exp of ``log q0(z_j) + C_j`` (``C_j`` the cumulative log-Jacobian) minus
  ``C_n``, so only ``2N - 1`` scalars per draw are kept, never the trajectory.

The leapfrog step is a vector ``eps = step_size * scale`` (the reference's per-coordinate
scale): with Laplace momentum each coordinate moves by ``eps_i`` per leapfrog step, so steps
in units of the posterior's scale make one ``step_size`` fit every coordinate. The dynamics
``dx_i/dt = eps_i sign(rho_i)``, ``drho_i/dt = eps_i d_i log pi`` conserve the Hamiltonian and
volume, so the exact flow preserves the augmented target; the leapfrog discretisation does
only approximately (that is the "uncorrected" in the name).

With ``reference="fullrank"`` (an extension: the paper's reference is mean-field) ``q0``'s
Gaussian is ``N(loc, L L^T)`` and the leapfrog runs in the whitened coordinates
``y = L^-1 (x - loc)`` (``grad_y = L^T grad_x``, ``dx = L dy``): a fixed linear change of
variables, so the map is the paper's map on the whitened target.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax import lax
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from numpyro_gflow._validate import positive_float, positive_float_or, positive_int
from numpyro_gflow.bridge import ModelBridge, merge_static_args, split_static_args
from numpyro_gflow.engine import ParticleEngine, Target
from numpyro_gflow.result import InferenceResult, latent_guide

__all__ = [
    "FlowPoint", "MixFlowParams", "ReferenceState", "ReferenceInfo", "reference_init",
    "reference_step", "reference_gaussian", "laplace", "flow_map", "inverse_flow_map",
    "sample_reference", "log_reference",
    "sample", "log_density", "elbo", "inversion_error", "acceptance", "MixFlow", "MixFlowKernel",
]

#: the irrational shift of the auxiliary variable per flow map (the authors' pi / 16)
U_SHIFT = math.pi / 16
#: Newton steps that finish the full-rank reference's mode search (``laplace``)
NEWTON_STEPS = 20
_LOG2 = math.log(2.0)


# ---------------------------------------------------------------------------- Laplace momentum
def laplace_cdf(r):
    return 0.5 - 0.5 * jnp.sign(r) * jnp.expm1(-jnp.abs(r))


def laplace_icdf(p):
    # (F(rho) + xi) mod 1 lands exactly on 0 about once in 1e7 refreshes in float32, where the
    # inverse CDF is -inf and the run turns NaN: keep p inside (0, 1)
    eps = jnp.finfo(jnp.result_type(p)).eps
    p = jnp.clip(p, 0.5 * eps, 1.0 - 0.5 * eps)
    return jnp.sign(0.5 - p) * jnp.log1p(-2.0 * jnp.abs(p - 0.5))


def log_laplace(r):
    """log m(rho) summed over the last axis (standard Laplace)."""
    return -jnp.sum(jnp.abs(r) + _LOG2, -1)


def _xi(x, u):
    return 0.5 * (jnp.sin(2.0 * x + u) + 1.0)


def _coordinate_u(u, d):
    """The auxiliary value each coordinate's refresh sees, and the next ``u`` (last entry):
    the authors' code shifts ``u`` by pi/16 after each coordinate."""
    return jnp.mod(u + U_SHIFT * jnp.arange(d + 1, dtype=jnp.result_type(u)), 1.0)


# ---------------------------------------------------------------------------- the flow map
class FlowPoint(NamedTuple):
    """A point of the augmented space, with ``log pi(x)`` and its gradient cached."""

    x: jax.Array        # (d,) position, NumPyro's unconstrained space
    rho: jax.Array      # (d,) Laplace momentum
    u: jax.Array        # () auxiliary variable in [0, 1)
    log_p: jax.Array    # () log pi(x)
    grad: jax.Array     # (d,) grad log pi(x)


class MixFlowParams(NamedTuple):
    loc: jax.Array        # (d,) reference mean
    scale: jax.Array      # (d,) reference sd (the diagonal of scale_tril when that is given)
    step_size: jax.Array  # (d,) leapfrog step per coordinate (of step_matrix's coordinates)
    # full-rank reference: q0's Gaussian is N(loc, scale_tril scale_tril^T); None: mean-field
    scale_tril: jax.Array | None = None
    # the leapfrog runs in coordinates y with x = loc + step_matrix y (a fixed linear change of
    # variables, volume- and energy-preserving in y); None: x's own coordinates
    step_matrix: jax.Array | None = None


def _point(x, rho, u, value_and_grad):
    log_p, grad = value_and_grad(x)
    return FlowPoint(x, rho, u, log_p, grad)


def _leapfrog(p: FlowPoint, eps, matrix, value_and_grad, direction: float) -> FlowPoint:
    # with a matrix M the dynamics run in y = M^{-1} x: grad_y = M^T grad_x, dx = M dy
    h = direction * eps
    g = p.grad if matrix is None else p.grad @ matrix
    rho = p.rho + 0.5 * h * g
    dy = h * jnp.sign(rho)
    x = p.x + (dy if matrix is None else matrix @ dy)
    log_p, grad = value_and_grad(x)
    g = grad if matrix is None else grad @ matrix
    return FlowPoint(x, rho + 0.5 * h * g, p.u, log_p, grad)


def _leapfrogs(p: FlowPoint, params: "MixFlowParams", value_and_grad, num_leapfrog: int,
               direction: float) -> FlowPoint:
    return lax.fori_loop(0, num_leapfrog, lambda _, q: _leapfrog(
        q, params.step_size, params.step_matrix, value_and_grad, direction), p)


def flow_map(p: FlowPoint, params: MixFlowParams, value_and_grad: Callable,
             num_leapfrog: int) -> tuple[FlowPoint, jax.Array]:
    """``T(p)`` and ``log |J_T(p)|``."""
    p = _leapfrogs(p, params, value_and_grad, num_leapfrog, 1.0)
    u = _coordinate_u(p.u, p.x.shape[-1])
    rho = laplace_icdf(jnp.mod(laplace_cdf(p.rho) + _xi(p.x, u[:-1]), 1.0))
    log_jac = log_laplace(p.rho) - log_laplace(rho)
    return p._replace(rho=rho, u=u[-1]), log_jac


def inverse_flow_map(p: FlowPoint, params: MixFlowParams, value_and_grad: Callable,
                     num_leapfrog: int) -> tuple[FlowPoint, jax.Array]:
    """``T^{-1}(p)`` and ``log |J_T(T^{-1} p)|`` (the forward map's log-Jacobian there)."""
    d = p.x.shape[-1]
    u = jnp.mod(p.u - d * U_SHIFT, 1.0)
    rho = laplace_icdf(jnp.mod(laplace_cdf(p.rho) - _xi(p.x, _coordinate_u(u, d)[:-1]), 1.0))
    log_jac = log_laplace(rho) - log_laplace(p.rho)
    p = p._replace(rho=rho, u=u)
    p = _leapfrogs(p, params, value_and_grad, num_leapfrog, -1.0)
    return p, log_jac


# ---------------------------------------------------------------------------- reference q0
def sample_reference(rng_key, params: MixFlowParams, value_and_grad: Callable) -> FlowPoint:
    k_x, k_rho, k_u = jax.random.split(rng_key, 3)
    d = params.loc.shape[-1]
    dtype = params.loc.dtype
    noise = jax.random.normal(k_x, (d,), dtype)
    x = params.loc + (params.scale * noise if params.scale_tril is None else params.scale_tril @ noise)
    rho = laplace_icdf(jax.random.uniform(k_rho, (d,), dtype, minval=1e-7, maxval=1 - 1e-7))
    return _point(x, rho, jax.random.uniform(k_u, (), dtype), value_and_grad)


def log_reference(p: FlowPoint, params: MixFlowParams):
    """log q0(x, rho, u) (``u`` always lies in [0, 1), where its density is 1)."""
    if params.scale_tril is None:
        log_x = jnp.sum(dist.Normal(params.loc, params.scale).log_prob(p.x), -1)
    else:
        log_x = dist.MultivariateNormal(params.loc, scale_tril=params.scale_tril).log_prob(p.x)
    return log_x + log_laplace(p.rho)


def log_target(p: FlowPoint):
    """log pibar(x, rho, u) = log pi(x) + log m(rho), up to pi's normalising constant."""
    return p.log_p + log_laplace(p.rho)


# ---------------------------------------------------------------------------- the three operations
def sample(rng_key, params: MixFlowParams, value_and_grad: Callable, flow_length: int,
           num_leapfrog: int) -> FlowPoint:
    """One draw of the MixFlow: ``T^K z0`` with ``K ~ U{0..N-1}``, ``z0 ~ q0`` (vmap for many)."""
    k_n, k_0 = jax.random.split(rng_key)
    n = jax.random.randint(k_n, (), 0, flow_length)
    p = sample_reference(k_0, params, value_and_grad)
    return lax.fori_loop(0, n, lambda _, q: flow_map(q, params, value_and_grad, num_leapfrog)[0], p)


def _finite_or_neg_inf(v):
    # a point whose backward orbit leaves the floating-point range (far in the tails) adds no
    # reference mass, rather than a NaN
    return jnp.where(jnp.isfinite(v), v, -jnp.inf)


def log_density(p: FlowPoint, params: MixFlowParams, value_and_grad: Callable,
                flow_length: int, num_leapfrog: int):
    """log q_N(x, rho, u): one backward pass, running log-sum-exp (O(1) memory in N)."""

    def body(carry, _):
        q, cum, acc = carry
        q, log_jac = inverse_flow_map(q, params, value_and_grad, num_leapfrog)
        cum = cum - log_jac            # log |J_{T^{-k}}(z)|
        return (q, cum, jnp.logaddexp(acc, _finite_or_neg_inf(log_reference(q, params) + cum))), None

    init = (p, jnp.zeros((), p.x.dtype), log_reference(p, params))
    (_, _, acc), _ = lax.scan(body, init, None, length=flow_length - 1)
    return acc - jnp.log(flow_length)


def _trajectory_terms(rng_key, params, value_and_grad, flow_length, num_leapfrog):
    """``log pibar(z_n) - log q_N(z_n)`` for ``z_n = T^n z0``, n < N, from one z0 ~ q0."""
    N = flow_length
    z0 = sample_reference(rng_key, params, value_and_grad)

    def back(carry, _):
        q, cum = carry
        q, log_jac = inverse_flow_map(q, params, value_and_grad, num_leapfrog)
        cum = cum - log_jac
        return (q, cum), _finite_or_neg_inf(log_reference(q, params) + cum)

    def fwd(carry, _):
        q, cum = carry
        out = (_finite_or_neg_inf(log_reference(q, params) + cum), log_target(q), cum)
        q, log_jac = flow_map(q, params, value_and_grad, num_leapfrog)
        return (q, cum + log_jac), out

    zero = jnp.zeros((), params.loc.dtype)
    _, a_back = lax.scan(back, (z0, zero), None, length=N - 1)        # j = -1 .. -(N-1)
    _, (a_fwd, log_t, cum) = lax.scan(fwd, (z0, zero), None, length=N)  # j = 0 .. N-1
    a = jnp.concatenate([a_back[::-1], a_fwd])                         # j = -(N-1) .. N-1

    def window(acc, k):  # acc[n] = logsumexp_{j = n-k..n} a_j, window of N ending at n
        return jnp.logaddexp(acc, lax.dynamic_slice_in_dim(a, N - 1 - k, N)), None

    acc, _ = lax.scan(window, jnp.full((N,), -jnp.inf, a.dtype), jnp.arange(N))
    log_q = acc - jnp.log(N) - cum
    return log_t - log_q


def elbo(rng_key, params: MixFlowParams, value_and_grad: Callable, flow_length: int,
         num_leapfrog: int, num_samples: int):
    """Unbiased ELBO estimate (augmented space) and its standard error, ``num_samples`` draws
    of ``z0``, each contributing its whole trajectory (``N`` terms for ``3N - 2`` flow maps)."""
    terms = jax.vmap(lambda k: jnp.mean(_trajectory_terms(k, params, value_and_grad, flow_length,
                                                          num_leapfrog)))(
        jax.random.split(rng_key, num_samples))
    return jnp.mean(terms), jnp.std(terms) / jnp.sqrt(num_samples)


def inversion_error(rng_key, params: MixFlowParams, value_and_grad: Callable, num_maps: int,
                    num_leapfrog: int):
    """max |z - T^{-n} T^n z| over the coordinates of (x, rho, u), for one z ~ q0.

    ``u`` is compared on the circle (it lives modulo 1)."""
    z = sample_reference(rng_key, params, value_and_grad)
    fwd = lax.fori_loop(0, num_maps, lambda _, q: flow_map(q, params, value_and_grad, num_leapfrog)[0], z)
    back = lax.fori_loop(0, num_maps,
                         lambda _, q: inverse_flow_map(q, params, value_and_grad, num_leapfrog)[0], fwd)
    du = jnp.abs(back.u - z.u)
    du = jnp.minimum(du, 1.0 - du)
    return jnp.maximum(jnp.maximum(jnp.max(jnp.abs(back.x - z.x)), jnp.max(jnp.abs(back.rho - z.rho))), du)


def acceptance(p: FlowPoint, params: MixFlowParams, value_and_grad: Callable, num_leapfrog: int):
    """``min(1, exp(-Delta H))`` of one map's leapfrog trajectory from ``p``: the acceptance
    probability a Metropolis-corrected HMC with this momentum would have (the flow has none;
    it is the step-size heuristic's yardstick of how far the leapfrog is from exact)."""
    q = _leapfrogs(p, params, value_and_grad, num_leapfrog, 1.0)
    delta = log_target(q) - log_target(p)
    return jnp.where(jnp.isfinite(delta), jnp.exp(jnp.minimum(delta, 0.0)), 0.0)


# ---------------------------------------------------------------------------- reference fit (core)
class ReferenceState(NamedTuple):
    """Gaussian VI of the reference (reparameterised ELBO gradients, optax).

    Mean-field: ``x = particles + exp(log_scale) * eps``. Full rank (``whiten`` given): the fit
    runs in coordinates ``y`` with ``x = center + whiten @ y`` (a Laplace approximation's mode
    and inverse-Hessian square root, fixed), where the posterior is close to ``N(0, I)`` and one
    Adam learning rate suits every parameter: ``y = particles + B eps``, ``B`` lower-triangular
    with diagonal ``exp(log_scale)`` and strictly lower part ``off_diag``."""

    particles: jax.Array    # (1, d) the reference mean (whitened coordinates when full rank)
    log_scale: jax.Array    # (1, d)
    opt_state: optax.OptState
    rng_key: jax.Array
    off_diag: jax.Array | None = None   # (1, d, d), used below the diagonal; None: mean-field
    center: jax.Array | None = None     # (1, d)
    whiten: jax.Array | None = None     # (1, d, d)


class ReferenceInfo(NamedTuple):
    elbo: jax.Array         # ELBO estimate of the reference at the start of the step


def _factor(log_scale, off_diag):
    """The full-rank fit's B (whitened coordinates): lower-triangular, diagonal exp(log_scale);
    only the strictly lower part of ``off_diag`` is used (so only it gets gradients)."""
    return jnp.tril(off_diag[0], -1) + jnp.diag(jnp.exp(log_scale[0]))


def _draws(params, eps, center, whiten):
    loc, log_scale, off = params
    if off is None:
        return loc + eps * jnp.exp(log_scale)
    return center + (loc + eps @ _factor(log_scale, off).T) @ whiten[0].T


def reference_gaussian(state: ReferenceState):
    """``(loc, scale, scale_tril)`` of the fitted reference in x's coordinates
    (``scale_tril`` None for a mean-field reference; ``scale`` its diagonal otherwise)."""
    if state.off_diag is None:
        return state.particles[0], jnp.exp(state.log_scale[0]), None
    W = state.whiten[0]
    loc = state.center[0] + W @ state.particles[0]
    tril = _lower_factor(W @ _factor(state.log_scale, state.off_diag))
    return loc, jnp.diagonal(tril), tril


def reference_init(loc, scale, optimizer: optax.GradientTransformation, rng_key,
                   whiten=None) -> ReferenceState:
    """Mean-field: ``loc`` and ``scale`` (per-coordinate sd). Full rank: ``whiten`` (d, d) maps
    whitened coordinates to x (``loc`` the centre); the fit starts at ``N(loc, whiten whiten^T)``."""
    loc = jnp.atleast_2d(loc)
    if whiten is None:
        log_scale = jnp.log(jnp.broadcast_to(jnp.asarray(scale, loc.dtype), loc.shape))
        params = (loc, log_scale, None)
        return ReferenceState(loc, log_scale, optimizer.init(params), rng_key)
    d = loc.shape[-1]
    y, log_b, off = jnp.zeros_like(loc), jnp.zeros_like(loc), jnp.zeros((1, d, d), loc.dtype)
    params = (y, log_b, off)
    return ReferenceState(y, log_b, optimizer.init(params), rng_key, off, loc,
                          jnp.asarray(whiten, loc.dtype).reshape(1, d, d))


def reference_step(state: ReferenceState, score_fn: Callable, optimizer, num_mc_samples: int
                   ) -> tuple[ReferenceState, ReferenceInfo]:
    rng_key, k_noise, k_batch = jax.random.split(state.rng_key, 3)
    d = state.particles.shape[-1]
    eps = jax.random.normal(k_noise, (num_mc_samples, d), state.particles.dtype)
    params = (state.particles, state.log_scale, state.off_diag)
    log_p, score = score_fn(_draws(params, eps, state.center, state.whiten), k_batch)
    log_det = 0.0 if state.whiten is None else jnp.linalg.slogdet(state.whiten[0])[1]
    entropy = jnp.sum(state.log_scale) + log_det + 0.5 * d * (1.0 + jnp.log(2 * jnp.pi))
    elbo_value = jnp.mean(log_p) + entropy

    # gradients of -ELBO: reparameterisation for the expected log density (the score held
    # fixed, differentiated through the draws), exact entropy (sum of the log diagonal)
    def surrogate(params):
        x = _draws(params, eps, state.center, state.whiten)
        return -jnp.mean(jnp.sum(score * x, -1)) - jnp.sum(params[1])

    grads = jax.grad(surrogate)(params)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    loc, log_scale, off = optax.apply_updates(params, updates)
    return state._replace(particles=loc, log_scale=log_scale, opt_state=opt_state,
                          rng_key=rng_key, off_diag=off), ReferenceInfo(elbo_value)


def laplace(log_p: Callable, x, map_steps: int, newton_steps: int = NEWTON_STEPS):
    """Mode and inverse-Hessian square root of ``log_p``: ``map_steps`` Adam steps from ``x``,
    then Newton steps with a crude line search (the best of the step halved up to 9 times, or
    none): Adam alone stalls short of the mode on ill-conditioned posteriors. Curvatures are
    floored (``isomix.floored_curvature``), so the result is a valid Gaussian on
    non-log-concave targets too."""
    from numpyro_gflow.isomix import _climb, floored_curvature

    if map_steps:
        x = _climb(log_p, x[None], map_steps)[0]

    def newton(_, x):
        # the Newton step scaled by 1, 1/2, .. 1/2^9 or 0: whichever point is highest
        lam, vec = floored_curvature(log_p, x)
        direction = vec @ ((vec.T @ jax.grad(log_p)(x)) / lam)
        t = jnp.concatenate([0.5 ** jnp.arange(10.0), jnp.zeros(1)]).astype(x.dtype)
        # t = 0 is x itself even where the direction is not finite
        points = x + jnp.where(t[:, None] > 0, t[:, None] * direction, 0.0)
        values = jax.vmap(log_p)(points)
        return points[jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf))]

    x = lax.fori_loop(0, newton_steps, newton, x)
    lam, vec = floored_curvature(log_p, x)
    return x, (vec * lam ** -0.5) @ vec.T


def _lower_factor(a):
    """Lower-triangular L with positive diagonal and L L^T = a a^T, by QR of a^T (no Cholesky of
    the product, which squares the condition number: float32 fails near 1e7)."""
    _, r = jnp.linalg.qr(a.T)
    sign = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(a.dtype)
    return (r * sign[:, None]).T


# ---------------------------------------------------------------------------- NumPyro-facing
class _StaticTarget(NamedTuple):
    """Hashable handle on a model and the static part of its inputs (a jit static argument)."""

    bridge: ModelBridge
    static: tuple
    treedef: object

    def value_and_grad(self, dynamic):
        args, kwargs = merge_static_args(dynamic, self.static, self.treedef)
        # the flow must be deterministic to be invertible: always the full data
        return lambda x: self.bridge.value_and_grad(x, args, kwargs)


def _split(bridge, args, kwargs):
    dynamic, static, treedef, _ = split_static_args(args, kwargs)
    static = tuple(static)
    try:
        hash(static)
    except TypeError:
        static = _Unhashable(static)
    return _StaticTarget(bridge, static, treedef), dynamic


class _Unhashable(tuple):
    """Static inputs that cannot be hashed: compared by identity (compiles once per object)."""

    def __new__(cls, value):
        self = super().__new__(cls, ())
        self.value = value
        return self

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _Unhashable) and other.value is self.value

    def __iter__(self):
        return iter(self.value)


@partial(jax.jit, static_argnames=("target", "flow_length", "num_leapfrog", "num_samples"))
def _jit_sample(rng_key, params, dynamic, target, flow_length, num_leapfrog, num_samples):
    vg = target.value_and_grad(dynamic)
    return jax.vmap(lambda k: sample(k, params, vg, flow_length, num_leapfrog))(
        jax.random.split(rng_key, num_samples))


@partial(jax.jit, static_argnames=("target", "flow_length", "num_leapfrog"))
def _jit_log_density(x, rho, u, params, dynamic, target, flow_length, num_leapfrog):
    vg = target.value_and_grad(dynamic)

    def one(x, rho, u):
        return log_density(_point(x, rho, u, vg), params, vg, flow_length, num_leapfrog)

    return jax.vmap(one)(x, rho, u)


@partial(jax.jit, static_argnames=("target", "flow_length", "num_leapfrog", "num_samples"))
def _jit_elbo(rng_key, params, dynamic, target, flow_length, num_leapfrog, num_samples):
    return elbo(rng_key, params, target.value_and_grad(dynamic), flow_length, num_leapfrog, num_samples)


@partial(jax.jit, static_argnames=("target", "num_maps", "num_leapfrog", "num_samples"))
def _jit_inversion_error(rng_key, params, dynamic, target, num_maps, num_leapfrog, num_samples):
    vg = target.value_and_grad(dynamic)
    return jax.vmap(lambda k: inversion_error(k, params, vg, num_maps, num_leapfrog))(
        jax.random.split(rng_key, num_samples))


@partial(jax.jit, static_argnames=("target", "flow_length", "num_leapfrog", "num_samples"))
def _jit_tune_elbo(rng_key, params, candidates, dynamic, target, flow_length, num_leapfrog, num_samples):
    """ELBO (and SE) of each candidate step size, the same draws of z0 for all (paired);
    ``params.step_size`` holds the per-coordinate unit the candidates multiply."""
    vg = target.value_and_grad(dynamic)

    def one(s):
        return elbo(rng_key, params._replace(step_size=s * params.step_size), vg, flow_length,
                    num_leapfrog, num_samples)

    return lax.map(one, candidates)


@partial(jax.jit, static_argnames=("target", "num_leapfrog", "num_samples"))
def _jit_tune_acceptance(rng_key, params, candidates, dynamic, target, num_leapfrog, num_samples):
    """Mean acceptance probability (and SE) of one map's leapfrog from draws of q0, per
    candidate step size (the same draws for all)."""
    vg = target.value_and_grad(dynamic)
    starts = jax.vmap(lambda k: sample_reference(k, params, vg))(jax.random.split(rng_key, num_samples))

    def one(s):
        a = jax.vmap(lambda p: acceptance(p, params._replace(step_size=s * params.step_size), vg,
                                          num_leapfrog))(starts)
        return jnp.mean(a), jnp.std(a) / jnp.sqrt(num_samples)

    return lax.map(one, candidates)


class MixFlowFit(NamedTuple):
    """What a fitted MixFlow needs: reference, step, and the model handle."""

    params: MixFlowParams
    flow_length: int
    num_leapfrog: int
    target: _StaticTarget
    dynamic: list


class MixFlow(ParticleEngine):
    """Mixed variational flow (MixFlow) of uncorrected Hamiltonian dynamics.

    Args:
        model: a NumPyro model with continuous latent sites.
        flow_length: ``N``, the number of flow maps the MixFlow averages over (authors:
            100-2000). Sampling and density evaluation each cost up to ``N`` flow maps, one map
            ``num_leapfrog + 1`` gradient evaluations.
        step_size: leapfrog step in units of the reference's per-coordinate sd (the vector
            step is ``step_size * scale``; with ``step_scale="unit"`` the same step in every
            coordinate). ``"auto"`` (default): chosen from ``step_size_grid``
            by ``step_size_rule``.
        step_size_rule: ``"acceptance"`` (default): the largest candidate whose one-map
            leapfrog trajectory from draws of ``q0`` has mean ``min(1, exp(-Delta H))`` of at
            least ``target_accept`` (the acceptance rate a Metropolis-corrected HMC would have;
            cheap: one map per draw, independent of ``N``). ``"elbo"``: the best ELBO estimate
            (the paper's criterion; ``num_tune_samples`` trajectories of ``3N - 2`` maps per
            candidate). The augmented-space ELBO penalises momenta off their Laplace law,
            which with Laplace momentum hardly affects the positions (they move by
            ``+-eps`` whatever ``|rho|``): on the banana it picks steps 5x smaller than the
            acceptance rule, whose draws are far closer to the posterior (energy distance 0.0012
            vs 0.056 at N = 1000; see the docs).
        target_accept: the acceptance rule's threshold (default 0.9).
        num_leapfrog: ``L`` leapfrog steps per flow map (authors: 200 on their banana, 80-100 on
            the funnel; longer maps mix faster per map, cost more per map).
        reference: ``"meanfield"`` (default): ``q0``'s Gaussian is a mean-field Gaussian VI fit
            (reparameterised ELBO gradients, Adam from ``reference_learning_rate`` halving every
            1000 steps, ``reference_mc_samples`` draws per step, for ``num_steps`` steps of
            ``run``; the mean starts at ``init_strategy``'s point, the sd at 0.1), as the authors
            do (they run 50,000-100,000 steps; 2,000-5,000 suffice on their 2-d targets).
            ``"fullrank"``: ``q0``'s Gaussian has a full covariance: the Laplace approximation
            (``map_steps`` Adam steps from ``init_strategy``'s point, then Newton steps; the
            inverse Hessian's square root ``W``), refined by full-rank Gaussian VI in the
            whitened coordinates ``y = W^-1 (x - mode)`` (learning rate 0.005 there). With
            ``step_scale="reference"`` the leapfrog runs in the reference's whitened
            coordinates too (``x = loc + L y``, ``L`` its Cholesky factor): a fixed linear change
            of variables, so volume and the Hamiltonian are preserved as before. O(d^2) per
            leapfrog step and d Hessian-vector products per Newton step, for correlated
            posteriors of moderate ``d`` (on diabetes regression, d = 12, the mean-field MixFlow's
            ELBO was 1.4 nats below the exact evidence, the full-rank one 0.01-0.04; docs).
            Or ``(loc, scale)``: flat unconstrained arrays (length ``d``) or dicts site ->
            unconstrained array, the starting point of the mean-field fit; ``scale`` a ``(d, d)``
            lower-triangular Cholesky factor starts a full-rank fit there (no Laplace step).
            ``run(key, 0, ...)`` keeps a given reference as given.
        map_steps: Adam steps of the ``"fullrank"`` reference's mode search (default 200).
        reference_learning_rate: the reference fit's Adam rate (``"auto"``: 0.05 mean-field,
            0.005 full rank).
        step_size_grid: the candidates of ``"auto"`` (default: 0.005 to 1.28, factors of sqrt 2).
        num_tune_samples: draws of ``z0`` per candidate step size (the same for all).
        num_draws: draws made at the end of the run (``result.get_samples()``), and of the
            final ELBO estimate.
        step_scale: ``"reference"`` (default): the leapfrog step of each coordinate is
            ``step_size`` times the reference's sd there (like a diagonal mass matrix);
            ``"unit"``: the same ``step_size`` in every coordinate, as the authors' code
            (``HF_params(0.016 * ones(d), ...)``). With Laplace momentum a coordinate moves by
            exactly its step per leapfrog, so this sets how far each coordinate travels per map.
            On the authors' banana (x1 sd 10) ``"unit"`` at step 0.016 gave ELBO -0.44 / -0.34 /
            -0.32 at N = 500 / 1000 / 2000 where ``"reference"`` peaked at -0.46 (docs).
        init_strategy: the reference mean's initial value (NumPyro init strategy).

    ``run(rng_key, num_steps, *args, **kwargs)`` fits the reference (``num_steps`` steps; 0 with a
    given reference), picks the step size and returns an `InferenceResult` whose ``flow``
    attribute (a `MixFlowResult`) has the three operations: ``sample``, ``log_density`` (on the
    augmented space) and ``elbo``. ``result.get_samples(num_samples, rng_key)`` draws afresh;
    ``result.trace`` holds the reference fit's per-step ``elbo``; ``result.stats`` the MixFlow's
    ELBO (augmented space, with its standard error) next to the reference's, the chosen step
    size, each candidate's tuning number, the inversion error ``max |z - T^-N T^N z|`` over 8
    draws, and ``grad_evals`` (model gradients the run used).
    The model's args must not change the latent dimension between ``run`` and later use.
    """

    objective = "elbo"
    min_particles = 1
    min_steps = 0
    supports_streaming = False   # the flow map and its density need the exact log density

    def __init__(self, model, *, flow_length: int = 100, step_size="auto", num_leapfrog: int = 20,
                 reference="meanfield", step_size_rule: str = "acceptance",
                 target_accept: float = 0.9, step_size_grid=tuple(0.005 * 2 ** (k / 2) for k in range(17)),
                 num_tune_samples: int = 64, num_draws: int = 1000,
                 reference_learning_rate="auto", reference_mc_samples: int = 8,
                 step_scale: str = "reference", map_steps: int = 200, init_strategy=init_to_uniform):
        super().__init__(model, num_particles=1, init_strategy=init_strategy)
        self.flow_length = positive_int("flow_length", flow_length)
        self.num_leapfrog = positive_int("num_leapfrog", num_leapfrog)
        if step_scale not in ("reference", "unit"):
            raise ValueError(f"step_scale must be 'reference' or 'unit', got {step_scale!r}")
        self.step_scale = step_scale
        self.step_size = positive_float_or("step_size", step_size, ("auto",))
        grid = tuple(positive_float("step_size_grid", s) for s in np.ravel(step_size_grid))
        if not grid:
            raise ValueError("step_size_grid must hold at least one positive step size")
        self.step_size_grid = tuple(sorted(grid))
        if step_size_rule not in ("acceptance", "elbo"):
            raise ValueError(f"step_size_rule must be 'acceptance' or 'elbo', got {step_size_rule!r}")
        self.step_size_rule = step_size_rule
        self.target_accept = positive_float("target_accept", target_accept)
        if not self.target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
        self.num_tune_samples = positive_int("num_tune_samples", num_tune_samples, 2)
        self.num_draws = positive_int("num_draws", num_draws, 2)
        self.reference_mc_samples = positive_int("reference_mc_samples", reference_mc_samples)
        self.map_steps = positive_int("map_steps", map_steps, 0)
        if isinstance(reference, str):
            if reference not in ("meanfield", "fullrank"):
                raise ValueError("reference must be 'meanfield', 'fullrank' or (loc, scale), "
                                 f"got {reference!r}")
        elif not (isinstance(reference, (tuple, list)) and len(reference) == 2):
            raise TypeError("reference must be 'meanfield', 'fullrank' or a (loc, scale) pair")
        self.reference = reference
        # Adam whose rate halves every 1000 steps (down to 1 %): fast start, then the iterate
        # settles instead of jittering around the optimum. The full-rank fit runs in whitened
        # coordinates from the Laplace fit and only corrects it: a smaller rate, halving every
        # 200 steps (gradient noise at a constant rate walks it away from a good start)
        full = self._full_rank()
        if reference_learning_rate == "auto":
            reference_learning_rate = 0.005 if full else 0.05
        lr = positive_float("reference_learning_rate", reference_learning_rate)
        self.optimizer = optax.adam(optax.exponential_decay(lr, 200 if full else 1000, 0.5,
                                                            end_value=lr / 100))

    # -------------------------------------------------------------- reference fit as the loop
    def _full_rank(self) -> bool:
        if isinstance(self.reference, str):
            return self.reference == "fullrank"
        scale = self.reference[1]
        return not isinstance(scale, dict) and jnp.ndim(scale) == 2

    def _reference_arrays(self, bridge: ModelBridge, particles):
        if isinstance(self.reference, str):
            return particles, jnp.full(particles.shape, 0.1, particles.dtype)  # AutoNormal's init_scale
        loc, scale = (bridge.flatten(v) if isinstance(v, dict) else jnp.asarray(v, particles.dtype)
                      for v in self.reference)
        d = bridge.dim
        if loc.shape != (d,) or jnp.shape(scale) not in ((), (d,), (d, d)):
            raise ValueError(f"reference (loc, scale) must have length {d} (the flat unconstrained "
                             f"dimension; scale may also be a ({d}, {d}) Cholesky factor), got "
                             f"{loc.shape} and {jnp.shape(scale)}")
        diag = jnp.diagonal(scale) if jnp.ndim(scale) == 2 else scale
        if not bool(jnp.all(jnp.isfinite(loc)) & jnp.all(diag > 0) & jnp.all(jnp.isfinite(scale))):
            raise ValueError("reference: loc must be finite and scale positive (a Cholesky "
                             "factor: positive diagonal)")
        if jnp.ndim(scale) == 2:
            if bool(jnp.any(jnp.triu(scale, 1) != 0)):
                raise ValueError("reference: a (d, d) scale must be a lower-triangular Cholesky "
                                 "factor (e.g. jnp.linalg.cholesky(cov)), got nonzeros above "
                                 "the diagonal")
            return loc[None], scale
        return loc[None], jnp.broadcast_to(scale, loc.shape)[None]

    def _core_init(self, particles, rng_key, target: Target):
        loc, scale = self._reference_arrays(target.bridge, particles)
        if self.reference == "fullrank":
            args, kwargs = target.model_args, target.model_kwargs
            log_p = lambda z: target.bridge.log_density(z, args, kwargs)  # noqa: E731
            center, whiten = laplace(log_p, loc[0], self.map_steps)
            return reference_init(center, None, self.optimizer, rng_key, whiten=whiten)
        if self._full_rank():
            return reference_init(loc, None, self.optimizer, rng_key, whiten=scale)
        return reference_init(loc, scale, self.optimizer, rng_key)

    def _core_step(self, state, score_fn):
        return reference_step(state, score_fn, self.optimizer, self.reference_mc_samples)

    # -------------------------------------------------------------- the flow on the fit
    def _result(self, state, info, bridge, args, kwargs, rng_key) -> InferenceResult:
        target, dynamic = _split(bridge, args, kwargs)
        loc, scale, tril = reference_gaussian(state)
        if not all(bool(jnp.all(jnp.isfinite(a))) for a in (loc, scale) + ((tril,) if tril is not None else ())):
            raise FloatingPointError(
                f"MixFlow: the {'full-rank' if tril is not None else 'mean-field'} reference fit is "
                "not finite (the model's density or its gradient is NaN/inf along the fit, or the "
                "Laplace mode search failed); check the model, or give reference=(loc, scale)")
        if self.step_scale == "reference":
            # steps in units of the reference: per-coordinate sd, or (full rank) whitened
            # coordinates y = L^-1 (x - loc), where q0 is a standard normal
            unit, matrix = (scale, None) if tril is None else (jnp.ones_like(scale), tril)
        else:
            unit, matrix = jnp.ones_like(scale), None
        params = MixFlowParams(loc, scale, unit, tril, matrix)  # step_size = the unit, during tuning
        k_tune, k_elbo, k_draw, k_inv = jax.random.split(jax.random.fold_in(rng_key, 7), 4)
        stats = {}
        if self.step_size == "auto":
            cands = jnp.asarray(self.step_size_grid, loc.dtype)
            if self.step_size_rule == "elbo":
                means, ses = _jit_tune_elbo(k_tune, params, cands, dynamic, target, self.flow_length,
                                            self.num_leapfrog, self.num_tune_samples)
                means = jnp.where(jnp.isfinite(means), means, -jnp.inf)
                best = int(jnp.argmax(means))
                if not bool(jnp.isfinite(means[best])):
                    raise FloatingPointError(
                        "MixFlow: every candidate step size gave a non-finite ELBO; check the "
                        "model's density or give step_size_grid smaller steps")
            else:
                means, ses = _jit_tune_acceptance(k_tune, params, cands, dynamic, target,
                                                  self.num_leapfrog, self.num_tune_samples)
                ok = np.flatnonzero(np.asarray(means) >= self.target_accept)
                # the largest step whose leapfrog keeps the energy error small; if none does,
                # the smallest candidate
                best = int(ok[-1]) if ok.size else 0
            step = float(cands[best])
            stats["step_size_grid"] = {float(c): (float(m), float(s)) for c, m, s in zip(cands, means, ses)}
        else:
            step = self.step_size
        params = params._replace(step_size=step * unit)
        fit = MixFlowFit(params, self.flow_length, self.num_leapfrog, target, dynamic)
        flow = MixFlowResult(fit)
        num_elbo = max(2, min(self.num_draws, 256))
        value, se = flow.elbo(k_elbo, num_elbo)
        # the reference's ELBO by the same estimator (a flow of length 1 is q0 itself)
        ref_value, ref_se = _jit_elbo(k_elbo, params, dynamic, target, 1, 1, 4 * num_elbo)
        stats.update(step_size=step, elbo=float(value), elbo_se=float(se),
                     reference_elbo=float(ref_value), reference_elbo_se=float(ref_se),
                     inversion_error=float(jnp.max(flow.inversion_error(k_inv, self.flow_length, 8))))
        draws = flow.sample(k_draw, self.num_draws)
        stats["grad_evals"] = self._grad_evals(len(info.elbo), num_elbo, loc.shape[0])
        result = InferenceResult(
            type(self).__name__, bridge, args, kwargs, draws.x, info._asdict(), state=state,
            objective=self.objective, sampler=lambda key, n: flow.sample(key, n).x,
            guide=latent_guide(bridge, _mixflow_latent(flow)), params={},
        )
        result.flow = flow
        result.stats = stats
        result.elbo = flow.elbo
        result.log_q = flow.marginal_log_density
        return result


    def _grad_evals(self, num_steps: int, num_elbo: int, dim: int) -> int:
        """Model-gradient evaluations of one ``run`` (a leapfrog step is one; maps reuse the
        last gradient): reference fit (with ``"fullrank"``: also the Laplace step, a
        Hessian-vector product counted as 2, a line-search density value as 1), step-size
        tuning, ELBO estimates, inversion check, and the draws (on average ``(N - 1) / 2`` maps
        each)."""
        N, L = self.flow_length, self.num_leapfrog
        trajectory = (2 * N - 1) * L + 1
        total = num_steps * self.reference_mc_samples
        if self.reference == "fullrank":
            total += self.map_steps + NEWTON_STEPS * (2 * dim + 1 + 11) + 2 * dim
        if self.step_size == "auto":
            per = trajectory if self.step_size_rule == "elbo" else L + 1
            total += len(self.step_size_grid) * self.num_tune_samples * per
        total += num_elbo * trajectory + 4 * num_elbo * (L + 1) + 8 * (2 * N * L + 1)
        total += self.num_draws * ((N - 1) * L // 2 + 1)
        return int(total)


class MixFlowResult:
    """A fitted MixFlow: the paper's three operations, compiled, vectorised over points."""

    def __init__(self, fit: MixFlowFit):
        self.fit = fit

    @property
    def params(self) -> MixFlowParams:
        return self.fit.params

    def _args(self):
        f = self.fit
        return f.params, f.dynamic, f.target

    def sample(self, rng_key, num_samples: int) -> FlowPoint:
        """``num_samples`` i.i.d. draws (augmented points; ``.x`` is the unconstrained latent)."""
        params, dynamic, target = self._args()
        return _jit_sample(rng_key, params, dynamic, target, self.fit.flow_length,
                           self.fit.num_leapfrog, positive_int("num_samples", num_samples))

    def log_density(self, x, rho, u) -> jax.Array:
        """log q_N at augmented points: ``x``, ``rho`` (n, d), ``u`` (n,) in [0, 1)."""
        params, dynamic, target = self._args()
        x = jnp.atleast_2d(jnp.asarray(x, params.loc.dtype))
        rho = jnp.atleast_2d(jnp.asarray(rho, params.loc.dtype))
        u = jnp.mod(jnp.atleast_1d(jnp.asarray(u, params.loc.dtype)), 1.0)
        return _jit_log_density(x, rho, u, params, dynamic, target, self.fit.flow_length,
                                self.fit.num_leapfrog)

    def marginal_log_density(self, x, rng_key=None, num_aux: int = 64) -> jax.Array:
        """log q_N(x) of the latent alone, by importance sampling over (rho, u) ~ m x U[0, 1):
        ``q_N(x) = E[q_N(x, rho, u) / m(rho)]``. Unbiased for the density (its log is biased
        low by about half the relative variance); ``num_aux`` draws per point."""
        params = self.params
        x = jnp.atleast_2d(jnp.asarray(x, params.loc.dtype))
        n, d = x.shape
        key = jax.random.key(0) if rng_key is None else rng_key
        k_rho, k_u = jax.random.split(key)
        rho = laplace_icdf(jax.random.uniform(k_rho, (n, num_aux, d), x.dtype, 1e-7, 1 - 1e-7))
        u = jax.random.uniform(k_u, (n, num_aux), x.dtype)
        xs = jnp.broadcast_to(x[:, None], (n, num_aux, d))
        lq = self.log_density(xs.reshape(-1, d), rho.reshape(-1, d), u.reshape(-1))
        lq = lq.reshape(n, num_aux) - log_laplace(rho)
        return jax.nn.logsumexp(lq, -1) - jnp.log(num_aux)

    def elbo(self, rng_key, num_samples: int = 256):
        """Unbiased ELBO estimate on the augmented space and its standard error."""
        params, dynamic, target = self._args()
        m, s = _jit_elbo(rng_key, params, dynamic, target, self.fit.flow_length,
                         self.fit.num_leapfrog, positive_int("num_samples", num_samples, 2))
        return m, s

    def inversion_error(self, rng_key, num_maps: int | None = None, num_samples: int = 8) -> jax.Array:
        """Per draw z ~ q0: max |z - T^{-n} T^n z| with ``n = num_maps`` (default ``N``)."""
        params, dynamic, target = self._args()
        n = self.fit.flow_length if num_maps is None else positive_int("num_maps", num_maps)
        return _jit_inversion_error(rng_key, params, dynamic, target, n, self.fit.num_leapfrog,
                                    positive_int("num_samples", num_samples))


def _mixflow_latent(flow: MixFlowResult):
    """The guide's latent: a distribution whose draws come from the MixFlow's sampler."""

    class _MixFlowLatent(dist.Distribution):
        support = dist.constraints.real_vector

        def __init__(self, dim):
            super().__init__(batch_shape=(), event_shape=(dim,))

        def sample(self, key, sample_shape=()):
            n = int(np.prod(sample_shape)) if sample_shape else 1
            # the flow evaluates the model's density: keep those sites from the guide's trace
            with numpyro.handlers.block():
                x = flow.sample(key, n).x
            return x.reshape(tuple(sample_shape) + self.event_shape)

        def log_prob(self, value):
            raise NotImplementedError("the MixFlow's latent density is on the augmented space; "
                                      "use result.flow.log_density or result.log_q")

    return _MixFlowLatent


# ---------------------------------------------------------------------------- MCMC kernel
class MixFlowKernelState(NamedTuple):
    x: jax.Array
    rho: jax.Array
    u: jax.Array
    log_p: jax.Array
    grad: jax.Array
    rng_key: jax.Array


class MixFlowKernel(MCMCKernel):
    """The flow map as an MCMC kernel: ``init`` draws ``z0 ~ q0``, each ``sample`` applies ``T``.

    ``MCMC(MixFlowKernel(model, ...), num_warmup=W, num_samples=S, num_chains=4)`` gives
    trajectories ``T^n z0`` (uncorrected: the chain targets the MixFlow's ergodic average, not
    exactly the posterior). The reference and step size come from a `MixFlow` fit run once per
    model input shapes in ``init`` (``reference_steps`` steps, key ``reference_key``), or from
    ``fit=`` (a result of ``MixFlow.run``).
    """

    sample_field = "x"

    def __init__(self, model=None, *, fit: InferenceResult | None = None, reference_steps: int = 2000,
                 reference_key=None, **mixflow_kwargs):
        if model is None and fit is None:
            raise ValueError("MixFlowKernel needs a model or fit= (a MixFlow.run result)")
        if fit is not None and not hasattr(fit, "flow"):
            raise TypeError("fit must be the result of MixFlow.run")
        self._model = model if model is not None else fit.bridge.model
        self._fit = fit
        self.reference_steps = positive_int("reference_steps", reference_steps, 0)
        if reference_key is not None and not is_prng_key(reference_key):
            raise TypeError("reference_key must be None or a JAX PRNG key, e.g. jax.random.key(0), "
                            f"got {type(reference_key).__name__}")
        self.reference_key = jax.random.key(0) if reference_key is None else reference_key
        self._engine = MixFlow(self._model, **mixflow_kwargs)
        self._step = None

    @property
    def model(self):
        return self._model

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):
        if self._fit is None:
            self._fit = self._engine.run(self.reference_key, self.reference_steps, *model_args,
                                         progress_bar=False, **model_kwargs)
        f = self._fit.flow.fit
        vg = f.target.value_and_grad(f.dynamic)

        def one(key, z=None):
            k_init, k_next = jax.random.split(key)
            p = sample_reference(k_init, f.params, vg)
            if z is not None:  # a given starting position, fresh momentum and auxiliary
                p = _point(z, p.rho, p.u, vg)
            return MixFlowKernelState(*p, k_next)

        z = None if init_params is None else self._fit.bridge.flatten_batch(init_params) \
            if self._batched(rng_key) else self._fit.bridge.flatten(init_params)
        if self._batched(rng_key):
            return jax.vmap(one)(rng_key, z) if z is not None else jax.vmap(one)(rng_key)
        return one(rng_key, z)

    @staticmethod
    def _batched(rng_key) -> bool:
        return not (is_prng_key(rng_key) or jnp.ndim(rng_key) == 0)

    def sample(self, state, model_args, model_kwargs):
        f = self._fit.flow.fit
        vg = f.target.value_and_grad(f.dynamic)
        step = lambda q: flow_map(q, f.params, vg, f.num_leapfrog)[0]  # noqa: E731
        point = FlowPoint(*state[:5])
        # vectorized chains may reach here batched (one row per chain)
        p = jax.vmap(step)(point) if state.x.ndim > 1 else step(point)
        return MixFlowKernelState(*p, state.rng_key)

    def postprocess_fn(self, model_args, model_kwargs):
        bridge = self._fit.bridge
        return lambda x: bridge.constrain(x, model_args, model_kwargs)

    def get_diagnostics_str(self, state):
        return ""
