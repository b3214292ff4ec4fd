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
``T^n q0`` over ``n = 0 .. N-1`` (``N = flow_length``),
``q0 = N(loc, diag(scale^2)) x m x U[0, 1)``:

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
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.scipy.special import ndtri

from numpyro_gflow.core.numerics import gaussian_log_density, lower_factor

__all__ = [
    "FlowPoint",
    "MixFlowParams",
    "ReferenceState",
    "ReferenceInfo",
    "reference_init",
    "reference_step",
    "reference_gaussian",
    "flow_map",
    "inverse_flow_map",
    "U_MIN",
    "reference_uniforms",
    "start",
    "sample_reference",
    "sample_references",
    "log_reference",
    "sample",
    "sample_from",
    "sample_many",
    "log_density",
    "elbo",
    "inversion_error",
    "inversion_error_at",
    "acceptance",
    "point",
]

#: the irrational shift of the auxiliary variable per flow map (the authors' pi / 16)
U_SHIFT = math.pi / 16
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


def point(x, rho, u, value_and_grad):
    log_p, grad = value_and_grad(x)
    return FlowPoint(x, rho, u, log_p, grad)


def _leapfrog(p: FlowPoint, eps, matrix, value_and_grad, direction: float,
              with_value: bool = True) -> FlowPoint:
    # with a matrix M the dynamics run in y = M^{-1} x: grad_y = M^T grad_x, dx = M dy
    h = direction * eps
    g = p.grad if matrix is None else p.grad @ matrix
    rho = p.rho + 0.5 * h * g
    dy = h * jnp.sign(rho)
    x = p.x + (dy if matrix is None else matrix @ dy)
    # without the value (kept stale) XLA drops what only the density's value needs
    log_p, grad = value_and_grad(x) if with_value else (p.log_p, value_and_grad(x)[1])
    g = grad if matrix is None else grad @ matrix
    return FlowPoint(x, rho + 0.5 * h * g, p.u, log_p, grad)


def _leapfrogs(p: FlowPoint, params: "MixFlowParams", value_and_grad, num_leapfrog: int,
               direction: float, with_value: bool = True) -> FlowPoint:
    """``num_leapfrog`` leapfrog steps; only the last evaluates ``log pi`` (the others need
    its gradient alone: measured 30 % cheaper on the breast-cancer regression, 500 points),
    or none (``with_value=False``: ``log_p`` is left stale)."""
    def step(q, with_value):
        return _leapfrog(q, params.step_size, params.step_matrix, value_and_grad, direction,
                         with_value)

    if not with_value:
        return lax.fori_loop(0, num_leapfrog, lambda _, q: step(q, False), p)
    p = lax.fori_loop(0, num_leapfrog - 1, lambda _, q: step(q, False), p)
    return step(p, True)


def flow_map(p: FlowPoint, params: MixFlowParams, value_and_grad: Callable,
             num_leapfrog: int, with_value: bool = True) -> tuple[FlowPoint, jax.Array]:
    """``T(p)`` and ``log |J_T(p)|``. ``with_value=False``: the returned point's ``log_p`` is
    its input's (stale; the map itself needs only gradients)."""
    p = _leapfrogs(p, params, value_and_grad, num_leapfrog, 1.0, with_value)
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
#: `reference_uniforms` keeps its uniforms in [U_MIN, 1 - U_MIN] (the normal and Laplace scores
#: they map to stay finite)
U_MIN = 1e-7


def reference_uniforms(rng_key, num: int, dim: int, dtype=jnp.float32):
    """``(num, 2 dim + 2)`` uniforms, each row all the randomness of one draw of the MixFlow:
    ``x``'s normal scores, ``rho``'s Laplace scores, ``u`` and the flow length ``K``
    (`start`). One call to the random-bit generator for all draws: under ``jax.jit`` every
    call site of ``jax.random`` compiles its own copy of the generator (about 0.15 s each on a
    CPU), and a draw made the plain way (split, normal, uniform, uniform) had six."""
    return jax.random.uniform(rng_key, (num, 2 * dim + 2), dtype, minval=U_MIN,
                              maxval=1.0 - U_MIN)


def start(w, params: MixFlowParams, value_and_grad: Callable, flow_length: int = 1
          ) -> tuple[FlowPoint, jax.Array]:
    """``z0 ~ q0`` and ``K ~ U{0..N-1}`` (``N = flow_length``) from one row ``w`` of
    `reference_uniforms`: ``x = loc + L Phi^{-1}(w[:d])``, ``rho = F^{-1}(w[d:2d])`` (``F`` the
    Laplace CDF), ``u = w[2d]``, ``K = floor(N w[2d+1])``."""
    d = params.loc.shape[-1]
    noise = ndtri(w[:d])
    x = params.loc + (params.scale * noise if params.scale_tril is None
                      else params.scale_tril @ noise)
    rho = laplace_icdf(w[d:2 * d])
    return point(x, rho, w[2 * d], value_and_grad), _num_maps(w[2 * d + 1], flow_length)


def _num_maps(w, flow_length: int):
    """``K = floor(N w)`` in ``0 .. N-1`` from a uniform ``w``."""
    return jnp.minimum(jnp.floor(w * flow_length), flow_length - 1).astype(jnp.int32)


def sample_reference(rng_key, params: MixFlowParams, value_and_grad: Callable) -> FlowPoint:
    """One draw ``z0 ~ q0`` (`start` of one row of `reference_uniforms`)."""
    w = reference_uniforms(rng_key, 1, params.loc.shape[-1], params.loc.dtype)[0]
    return start(w, params, value_and_grad)[0]


def sample_references(rng_key, num: int, params: MixFlowParams, value_and_grad: Callable
                      ) -> FlowPoint:
    """``num`` draws of ``q0`` (batched ``FlowPoint``), from one `reference_uniforms` call."""
    w = reference_uniforms(rng_key, num, params.loc.shape[-1], params.loc.dtype)
    return jax.vmap(lambda r: start(r, params, value_and_grad)[0])(w)


def log_reference(p: FlowPoint, params: MixFlowParams):
    """log q0(x, rho, u) (``u`` always lies in [0, 1), where its density is 1)."""
    if params.scale_tril is None:
        log_x = jnp.sum(jax.scipy.stats.norm.logpdf(p.x, params.loc, params.scale), -1)
    else:
        log_x = gaussian_log_density(p.x, params.loc, params.scale_tril)
    return log_x + log_laplace(p.rho)


def log_target(p: FlowPoint):
    """log pibar(x, rho, u) = log pi(x) + log m(rho), up to pi's normalising constant."""
    return p.log_p + log_laplace(p.rho)


# ---------------------------------------------------------------------------- the three operations
def _advance(p: FlowPoint, n, params, value_and_grad, num_leapfrog) -> FlowPoint:
    return lax.fori_loop(0, n, lambda _, q: flow_map(q, params, value_and_grad, num_leapfrog)[0], p)


def sample_from(w, params: MixFlowParams, value_and_grad: Callable, flow_length: int,
                num_leapfrog: int) -> FlowPoint:
    """The draw ``T^K z0`` that one row ``w`` of `reference_uniforms` makes (`start`)."""
    p, n = start(w, params, value_and_grad, flow_length)
    return _advance(p, n, params, value_and_grad, num_leapfrog)


def sample(rng_key, params: MixFlowParams, value_and_grad: Callable, flow_length: int,
           num_leapfrog: int) -> FlowPoint:
    """One draw of the MixFlow: ``T^K z0`` with ``K ~ U{0..N-1}``, ``z0 ~ q0``
    (`sample_many` for many)."""
    w = reference_uniforms(rng_key, 1, params.loc.shape[-1], params.loc.dtype)[0]
    return sample_from(w, params, value_and_grad, flow_length, num_leapfrog)


#: `sample_many` advances all draws at once below this many, and from it on half of them at a
#: time (``ceil(num_samples / SAMPLE_CHUNKS)`` slots)
SAMPLE_CHUNK_MIN = 256
SAMPLE_CHUNKS = 2


def _pack(p: FlowPoint) -> jax.Array:
    """A batch of points as one ``(n, 3d + 2)`` array (one gather, select and scatter per
    loop iteration in `sample_many`, not five)."""
    return jnp.concatenate([p.x, p.rho, p.u[:, None], p.log_p[:, None], p.grad], -1)


def _unpack(a: jax.Array, d: int) -> FlowPoint:
    return FlowPoint(a[:, :d], a[:, d:2 * d], a[:, 2 * d], a[:, 2 * d + 1], a[:, 2 * d + 2:])


def sample_many(rng_key, num_samples: int, params: MixFlowParams, value_and_grad: Callable,
                flow_length: int, num_leapfrog: int) -> FlowPoint:
    """``num_samples`` i.i.d. draws: `sample_from` of each row of ``reference_uniforms(rng_key,
    num_samples, ...)`` (the same draws), at about the cost of the maps the draws need
    (``K ~ U{0..N-1}`` each, ``(N - 1) / 2`` on average), where a vmapped loop runs every draw
    for the largest ``K``. The draws wait in a queue, longest ``K`` first; a batch of slots
    (all draws below `SAMPLE_CHUNK_MIN`, else a `SAMPLE_CHUNKS`-th of them) applies one flow map
    per iteration to the draws it holds, and a slot whose draw has had its ``K`` maps hands it
    in and takes the next from the queue. With half of the draws in the slots the loop runs
    about ``N`` iterations (the last loads are the shortest; 1.02 N simulated for 1000 draws,
    N = 100): 0.51 ``N`` maps per draw, where four sequential sorted chunks (this function
    before) took ``5 N / 8``. Measured on the breast-cancer regression (1000 draws, N = 100,
    2 CPU cores): 2.29 s for the four chunks; slots for a quarter of the draws (2.0 N
    iterations, 0.50 N maps per draw) 1.95 s; for half 1.71 s (wider batches run faster); all
    at once (a vmapped loop, N maps per draw) 2.9 s."""
    m, d = num_samples, params.loc.shape[-1]
    w = reference_uniforms(rng_key, m, d, params.loc.dtype)
    n = _num_maps(w[:, -1], flow_length)
    # one row per draw (a draw with K = 0 is its start) and a discard row, index m, where the
    # slots with nothing to hand in write
    out = _pack(jax.vmap(lambda r: start(r, params, value_and_grad)[0])(w))
    out = jnp.concatenate([out, out[:1]])
    width = m if m < SAMPLE_CHUNK_MIN else -(-m // SAMPLE_CHUNKS)
    order = jnp.argsort(-n)                         # the queue: longest first
    # the maps evaluate gradients only; each draw's log pi is evaluated once, after the loop
    # (one copy of the leapfrog step in the loop's program instead of two: 0.1 s less to
    # compile on the breast-cancer regression)
    one_map = jax.vmap(lambda q: flow_map(q, params, value_and_grad, num_leapfrog, False)[0])

    def body(carry):
        slots, left, ids, queued, out = carry
        moving = left > 0
        slots = jnp.where(moving[:, None], _pack(one_map(_unpack(slots, d))), slots)
        left = left - moving.astype(left.dtype)
        done = (left == 0) & (ids < m)
        out = out.at[jnp.where(done, ids, m)].set(slots)
        # the finished slots take the next draws of the queue, in slot order
        pos = queued + jnp.cumsum(done) - 1
        refill = done & (pos < m)
        nxt = order[jnp.minimum(pos, m - 1)]
        slots = jnp.where(refill[:, None], out[nxt], slots)
        left = jnp.where(refill, n[nxt], left)
        ids = jnp.where(refill, nxt, jnp.where(done, m, ids))   # m: the slot is retired
        return slots, left, ids, queued + jnp.sum(done).astype(queued.dtype), out

    first = order[:width]
    carry = (out[first], n[first], first, jnp.asarray(width, order.dtype), out)
    out = _unpack(lax.while_loop(lambda c: jnp.any(c[2] < m), body, carry)[4][:m], d)
    return out._replace(log_p=jax.vmap(lambda x: value_and_grad(x)[0])(out.x))


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
        return (q, cum,
                jnp.logaddexp(acc, _finite_or_neg_inf(log_reference(q, params) + cum))), None

    init = (p, jnp.zeros((), p.x.dtype), log_reference(p, params))
    (_, _, acc), _ = lax.scan(body, init, None, length=flow_length - 1)
    return acc - jnp.log(flow_length)


def _trajectory_terms(z0: FlowPoint, params, value_and_grad, flow_length, num_leapfrog):
    """``log pibar(z_n) - log q_N(z_n)`` for ``z_n = T^n z0``, n < N, from one z0 ~ q0."""
    N = flow_length

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
    starts = sample_references(rng_key, num_samples, params, value_and_grad)
    terms = jax.vmap(lambda z0: jnp.mean(_trajectory_terms(z0, params, value_and_grad,
                                                           flow_length, num_leapfrog)))(starts)
    return jnp.mean(terms), jnp.std(terms) / jnp.sqrt(num_samples)


def inversion_error(rng_key, params: MixFlowParams, value_and_grad: Callable, num_maps: int,
                    num_leapfrog: int):
    """max |z - T^{-n} T^n z| over the coordinates of (x, rho, u), for one z ~ q0.

    ``u`` is compared on the circle (it lives modulo 1)."""
    return inversion_error_at(sample_reference(rng_key, params, value_and_grad), params,
                              value_and_grad, num_maps, num_leapfrog)


def inversion_error_at(z: FlowPoint, params: MixFlowParams, value_and_grad: Callable,
                       num_maps: int, num_leapfrog: int):
    """`inversion_error` from a given point ``z``."""
    fwd = lax.fori_loop(0, num_maps,
                        lambda _, q: flow_map(q, params, value_and_grad, num_leapfrog)[0], z)
    back = lax.fori_loop(0, num_maps,
                         lambda _, q: inverse_flow_map(q, params, value_and_grad,
                                                       num_leapfrog)[0], fwd)
    du = jnp.abs(back.u - z.u)
    du = jnp.minimum(du, 1.0 - du)
    return jnp.maximum(jnp.maximum(jnp.max(jnp.abs(back.x - z.x)),
                                   jnp.max(jnp.abs(back.rho - z.rho))), du)


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

    Mean-field: ``x = loc + exp(log_scale) * eps``. Full rank (``whiten`` given): the fit
    runs in coordinates ``y`` with ``x = center + whiten @ y`` (a Laplace approximation's mode
    and inverse-Hessian square root, fixed), where the posterior is close to ``N(0, I)`` and one
    Adam learning rate suits every parameter: ``y = loc + B eps``, ``B`` lower-triangular
    with diagonal ``exp(log_scale)`` and strictly lower part ``off_diag``."""

    loc: jax.Array          # (1, d) the reference mean (whitened coordinates when full rank)
    log_scale: jax.Array    # (1, d)
    opt_state: optax.OptState
    rng_key: jax.Array
    off_diag: jax.Array | None = None   # (1, d, d), used below the diagonal; None: mean-field
    center: jax.Array | None = None     # (1, d)
    whiten: jax.Array | None = None     # (1, d, d)
    log_det: jax.Array | None = None    # () log |det whiten| (the entropy's constant part)


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
        return state.loc[0], jnp.exp(state.log_scale[0]), None
    W = state.whiten[0]
    loc = state.center[0] + W @ state.loc[0]
    tril = lower_factor(W @ _factor(state.log_scale, state.off_diag))
    return loc, jnp.diagonal(tril), tril


def reference_init(loc, scale, optimizer: optax.GradientTransformation, rng_key,
                   whiten=None) -> ReferenceState:
    """Mean-field: ``loc`` and ``scale`` (per-coordinate sd). Full rank: ``whiten`` (d, d) maps
    whitened coordinates to x (``loc`` the centre); the fit starts at
    ``N(loc, whiten whiten^T)``."""
    loc = jnp.atleast_2d(loc)
    if whiten is None:
        log_scale = jnp.log(jnp.broadcast_to(jnp.asarray(scale, loc.dtype), loc.shape))
        params = (loc, log_scale, None)
        return ReferenceState(loc, log_scale, optimizer.init(params), rng_key)
    d = loc.shape[-1]
    y, log_b, off = jnp.zeros_like(loc), jnp.zeros_like(loc), jnp.zeros((1, d, d), loc.dtype)
    params = (y, log_b, off)
    whiten = jnp.asarray(whiten, loc.dtype).reshape(1, d, d)
    return ReferenceState(y, log_b, optimizer.init(params), rng_key, off, loc, whiten,
                          jnp.linalg.slogdet(whiten[0])[1])


def reference_step(state: ReferenceState, score_fn: Callable, optimizer, num_mc_samples: int
                   ) -> tuple[ReferenceState, ReferenceInfo]:
    rng_key, k_noise, k_batch = jax.random.split(state.rng_key, 3)
    d = state.loc.shape[-1]
    eps = jax.random.normal(k_noise, (num_mc_samples, d), state.loc.dtype)
    params = (state.loc, state.log_scale, state.off_diag)
    log_p, score = score_fn(_draws(params, eps, state.center, state.whiten), k_batch)
    # log |det whiten|, computed once in `reference_init` (an LU per step, and 0.05-0.09 s of
    # the fit loop's compilation on the breast-cancer regression, otherwise)
    log_det = (0.0 if state.whiten is None else state.log_det if state.log_det is not None
               else jnp.linalg.slogdet(state.whiten[0])[1])
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
    return state._replace(loc=loc, log_scale=log_scale, opt_state=opt_state,
                          rng_key=rng_key, off_diag=off), ReferenceInfo(elbo_value)
