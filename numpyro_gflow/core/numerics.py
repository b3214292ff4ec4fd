"""Shared numerics of the cores: Hessian-vector products, curvature, MAP climbs, Laplace.

Pure JAX (no NumPyro): every function takes a log density ``log_p`` mapping a flat (d,) point
to a scalar. Used by the engines that set step sizes or start covariances from curvature
(IsoGaussianMixtureVI, FBGVI) and by MixFlow's full-rank reference.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

__all__ = [
    "MODE_DECREMENT_MAX",
    "NEWTON_STEPS",
    "Affine",
    "best_laplace",
    "climb",
    "curvature",
    "floored_curvature",
    "gaussian_log_density",
    "hessian",
    "hvp",
    "laplace",
    "lower_factor",
    "newton_decrement",
    "replace_stragglers",
    "smallest_curvature",
    "spread_starts",
    "whitening",
]

#: Newton steps that finish `laplace`'s mode search
NEWTON_STEPS = 20


def climb(log_p, z, num_steps, learning_rate=0.05):
    """Adam ascent of ``log_p`` from each row of ``z`` (n, d): one MAP search per point."""

    opt = optax.adam(learning_rate)
    grad = jax.vmap(jax.grad(lambda x: -log_p(x)))

    def body(carry, _):
        z, state = carry
        updates, state = opt.update(grad(z), state, z)
        return (optax.apply_updates(z, updates), state), None

    (z, _), _ = jax.lax.scan(body, (z, opt.init(z)), None, length=num_steps)
    return z


def hvp(log_p, x, v):
    """``-grad^2 log p(x) v``: a Hessian-vector product of the potential (forward over
    reverse), at the cost of about two gradients."""
    return jax.jvp(jax.grad(lambda y: -log_p(y)), (x,), (v,))[1]


def hessian(log_p, x):
    """Dense Hessian of -log p at x from d Hessian-vector products (forward over reverse)."""
    return jax.vmap(lambda v: hvp(log_p, x, v))(jnp.eye(x.shape[0], dtype=x.dtype))


def floored_curvature(log_p, x):
    """Eigen-decomposition ``(lam, vec)`` of the Hessian of -log p at x with each eigenvalue
    replaced by its absolute value, floored at 1e-6 of the largest: a valid precision matrix
    ``vec diag(lam) vec^T`` also where log p is not concave (its H^{-1/2} whitens)."""
    h = hessian(log_p, x)
    lam, vec = jnp.linalg.eigh(0.5 * (h + h.T))
    return jnp.maximum(jnp.abs(lam), 1e-6 * jnp.max(jnp.abs(lam)) + 1e-30), vec


def whitening(log_p, x, floor: float = 1e-6):
    """``W`` (d, d) with ``W W^T`` the inverse of the floored Hessian of ``-log p`` at ``x``:
    ``z = x + W u`` makes a Gaussian-like posterior near ``N(0, I)`` in ``u``.

    Safe in float32 where a plain eigen-decomposition is not: a regression on an uncentred
    predictor (``mom_iq`` ~ 100, a calendar year) has a Hessian with condition number 1e6-1e9,
    beyond float32's resolution, and flooring its eigenvalues at 1e-6 of the largest shrinks
    the flat directions' sds by half (measured on posteriordb's kidiq and earnings
    regressions). So: (1) Jacobi scaling ``D^{-1/2} H D^{-1/2}`` (``D = diag |H|``) takes out
    the parameters' scales; (2) the floored eigen-decomposition of the scaled matrix gives a
    first ``W``; (3) one refinement: the Hessian in the first ``W``'s coordinates, ``W^T H W``
    (from d Hessian-vector products along ``W``'s columns, close to ``I``), is decomposed
    again and folded in. Eigenvalues are replaced by their absolute values and floored at
    ``floor`` of the largest, so ``W`` is valid where ``log p`` is not concave."""
    h = hessian(log_p, x)
    h = 0.5 * (h + h.T)
    scale = jnp.abs(jnp.diagonal(h))
    scale = 1.0 / jnp.sqrt(jnp.where(scale > 0, scale, 1.0))
    w = _floored_inv_sqrt(scale[:, None] * h * scale[None, :], floor) * scale[:, None]
    hw = jax.vmap(lambda v: hvp(log_p, x, v), in_axes=1, out_axes=1)(w)
    hu = w.T @ hw
    w2 = w @ _floored_inv_sqrt(0.5 * (hu + hu.T), floor)
    # a refinement that is not finite (a Hessian-vector product overflowed) keeps step (2)
    return jnp.where(jnp.all(jnp.isfinite(w2)), w2, w)


def _floored_inv_sqrt(h, floor):
    """``V diag(max(|lam|, floor max|lam|))^{-1/2}`` for ``h = V diag(lam) V^T``."""
    lam, vec = jnp.linalg.eigh(h)
    lam = jnp.maximum(jnp.abs(lam), floor * jnp.max(jnp.abs(lam)) + 1e-30)
    return vec * lam ** -0.5


def curvature(log_p, z, rng_key, iterations: int = 30):
    """Per point: tr(-grad^2 log p) (Hutchinson-free: exact via d HVPs would cost d; we use the
    diagonal by forward-over-reverse on basis vectors for d <= 200, else 20 Rademacher probes)
    and the largest eigenvalue by power iteration."""
    d = z.shape[1]

    def one(x, key):
        if d <= 200:
            tr = jnp.sum(jax.vmap(lambda e: e @ hvp(log_p, x, e))(jnp.eye(d, dtype=x.dtype)))
        else:
            probes = jax.random.rademacher(key, (20, d), x.dtype)
            tr = jnp.mean(jax.vmap(lambda v: v @ hvp(log_p, x, v))(probes))
        v = jax.random.normal(jax.random.fold_in(key, 1), (d,), x.dtype)

        def power(v, _):
            w = hvp(log_p, x, v)
            return w / (jnp.linalg.norm(w) + 1e-30), None

        v, _ = jax.lax.scan(power, v / jnp.linalg.norm(v), None, length=iterations)
        top = jnp.abs(v @ hvp(log_p, x, v))
        return tr, top

    return jax.vmap(one)(z, jax.random.split(rng_key, z.shape[0]))


#: up to this dimension `curvature_extremes` decomposes the dense Hessian (d Hessian-vector
#: products in one batch, exact); above it, power iterations (fewer products, approximate)
DENSE_CURVATURE_MAX = 200


def curvature_extremes(log_p, x, rng_key):
    """``(trace, largest |eigenvalue|, smallest eigenvalue)`` of ``-grad^2 log p(x)`` at one
    point ``x`` (d,). For ``d <= DENSE_CURVATURE_MAX`` exactly, from the dense Hessian (one
    batch of d Hessian-vector products: one copy of the model's second-order graph to compile,
    where the power iterations are two loops more); above, `curvature`'s trace and power
    iteration and `smallest_curvature`."""
    d = x.shape[0]
    if d <= DENSE_CURVATURE_MAX:
        h = hessian(log_p, x)
        lam = jnp.linalg.eigvalsh(0.5 * (h + h.T))
        return jnp.trace(h), jnp.max(jnp.abs(lam)), lam[0]
    trace, top = curvature(log_p, x[None], rng_key)
    low = smallest_curvature(log_p, x, top[0], jax.random.fold_in(rng_key, 3))
    return trace[0], top[0], low


def smallest_curvature(log_p, x, top, rng_key, iterations: int = 100):
    """Smallest eigenvalue of ``-grad^2 log p(x)`` by power iteration on ``top I - H``."""
    v = jax.random.normal(rng_key, x.shape, x.dtype)

    def power(v, _):
        w = top * v - hvp(log_p, x, v)
        return w / (jnp.linalg.norm(w) + 1e-30), None

    v, _ = jax.lax.scan(power, v / jnp.linalg.norm(v), None, length=iterations)
    return v @ hvp(log_p, x, v)


def laplace(log_p: Callable, x, map_steps: int, newton_steps: int = NEWTON_STEPS):
    """Mode and inverse-Hessian square root of ``log_p``: ``map_steps`` Adam steps from ``x``,
    then Newton steps with a crude line search (the best of the step halved up to 9 times, or
    none): Adam alone stalls short of the mode on ill-conditioned posteriors. Returns the mode
    and a `whitening` factor ``W`` (``W W^T`` = the floored inverse Hessian; not symmetric),
    a valid Gaussian on non-log-concave targets too."""
    if map_steps:
        x = climb(log_p, x[None], map_steps)[0]

    def newton(i, carry):
        # the Newton step scaled by 1, 1/2, .. 1/2^9 or 0: whichever point is highest. One
        # iteration more than steps, which only computes the factor at the final point: the
        # factor's code (2d Hessian-vector products, two eigen-decompositions) is compiled
        # once, not again after the loop (the breast-cancer Laplace search, 8 starts: XLA 0.66 ->
        # 0.56 s at LLVM level 1)
        x, _ = carry
        w = whitening(log_p, x)
        direction = w @ (w.T @ jax.grad(log_p)(x))
        t = jnp.concatenate([0.5 ** jnp.arange(10.0), jnp.zeros(1)]).astype(x.dtype)
        # t = 0 is x itself even where the direction is not finite
        points = x + jnp.where(t[:, None] > 0, t[:, None] * direction, 0.0)
        values = jax.vmap(log_p)(points)
        best = points[jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf))]
        return jnp.where(i < newton_steps, best, x), w

    d = x.shape[-1]
    return lax.fori_loop(0, newton_steps + 1, newton, (x, jnp.zeros((d, d), x.dtype)))


class Affine(NamedTuple):
    """Coordinates ``u`` with ``z = shift + scale @ u`` (``scale`` (d, d) invertible): an
    engine that runs in ``u`` sees ``log p(shift + scale u)`` -- with `whitening`'s ``scale`` at
    the mode, a Gaussian-like posterior is close to ``N(0, I)`` whatever its scales and
    correlations (what NUTS gets from adapting a dense mass matrix)."""

    shift: jax.Array        # (d,)
    scale: jax.Array        # (d, d)
    log_det: jax.Array      # log |det scale|: log q_z(z) = log q_u(u) - log_det

    @classmethod
    def identity(cls, d, dtype):
        return cls(jnp.zeros(d, dtype), jnp.eye(d, dtype=dtype), jnp.zeros((), dtype))

    @classmethod
    def of(cls, shift, scale):
        return cls(shift, scale, jnp.linalg.slogdet(scale)[1].astype(shift.dtype))

    def to_z(self, u):
        """``u`` (..., d) -> ``z`` (..., d)."""
        return self.shift + u @ self.scale.T

    def score_fn(self, score_fn):
        """``(u (n, d), key) -> (log p (n,), grad_u log p (n, d))`` from the same in ``z``."""
        def score_u(u, key):
            log_p, score = score_fn(self.to_z(u), key)
            return log_p, score @ self.scale
        return score_u

    def hvp_fn(self, hvp_fn):
        """``(u, v, key) -> scale^T H(z) scale v``: the Hessian-vector product in ``u``."""
        return lambda u, v, key: self.scale.T @ hvp_fn(self.shift + self.scale @ u,
                                                       self.scale @ v, key)

    def log_p(self, log_p):
        return lambda u: log_p(self.shift + self.scale @ u)


#: Newton decrement ``g^T W W^T g`` (twice the log-density gain a Newton step predicts) above
#: which a Laplace mode search has not converged: the log density has no mode there
MODE_DECREMENT_MAX = 1.0


def newton_decrement(log_p: Callable, x, whiten):
    """``g^T W W^T g`` at ``x`` (``g`` the gradient of ``log_p``, ``W W^T`` the floored inverse
    Hessian): about 0 at a mode, and large where the mode search is still climbing."""
    return jnp.sum((whiten.T @ jax.grad(log_p)(x)) ** 2)


def best_laplace(log_p: Callable, starts, map_steps: int, newton_steps: int = NEWTON_STEPS):
    """`laplace` from each row of ``starts`` (k, d); the mode with the highest finite
    ``log_p`` and its factor. Several starts guard against a local mode that one start finds:
    on posteriordb's ARMA(1, 1) a start from U(-2, 2) can climb to a non-invertible
    (``|theta| > 1``) mode 96 reference sds away.

    Only searches that converged count (Newton decrement at most `MODE_DECREMENT_MAX`). A log
    density without a mode -- a centred hierarchical model, whose density grows without bound
    as a group scale goes to 0 with every group effect at the mean (the funnel) -- has none:
    the search runs down the funnel's neck (``log tau`` -16 after 20 Newton steps, decrement
    1e7-1e8, where the 13 posteriordb posteriors' modes have at most 2e-4), and a Gaussian
    there has scales from 1e-8 to 1e3: particles started in it are non-finite at once. Then
    ``(starts[0], I)`` is returned: NumPyro's own unconstrained coordinates, shifted to the
    init strategy's point."""
    modes, factors = jax.vmap(lambda x: laplace(log_p, x, map_steps, newton_steps))(starts)
    values = jax.vmap(log_p)(modes)
    decrements = jax.vmap(lambda x, w: newton_decrement(log_p, x, w))(modes, factors)
    ok = (jnp.isfinite(values) & jnp.all(jnp.isfinite(factors), axis=(1, 2))
          & (decrements <= MODE_DECREMENT_MAX))
    best = jnp.argmax(jnp.where(ok, values, -jnp.inf))
    found = jnp.any(ok)
    eye = jnp.eye(starts.shape[1], dtype=factors.dtype)
    return jnp.where(found, modes[best], starts[0]), jnp.where(found, factors[best], eye)


def replace_stragglers(log_p: Callable, z, slack=None):
    """Rows of ``z`` (n, d) whose ``log_p`` is non-finite or more than ``slack`` below the
    highest are replaced by copies of the others (round-robin, best first). Default slack:
    ``max(20, d)`` nats. A Gaussian posterior's typical draws sit ``d/2 +- sqrt(d/2)`` below its
    mode, so a point climbed to within the slack is in the bulk; one far below it is on a mode
    of negligible mass or stuck where the density is absurd (posteriordb's ARMA(1, 1): a
    uniform start with an explosive ``theta`` has a finite log density of -4e26 and an
    overflowing gradient, and a mixture component left there blows up at the first step).
    A uniform-weight mixture puts 1/n of its mass on each component, so neither belongs in it.
    If no row is finite, ``z`` is returned unchanged."""
    n, d = z.shape
    slack = max(20.0, float(d)) if slack is None else slack
    values = jax.vmap(log_p)(z)
    values = jnp.where(jnp.isfinite(values), values, -jnp.inf)
    keep = values >= jnp.max(values) - slack
    order = jnp.argsort(-values)                       # best first
    num_keep = jnp.maximum(jnp.sum(keep), 1)
    # the j-th straggler takes the (j mod num_keep)-th best kept row
    rank = jnp.cumsum(~keep) - 1
    donor = order[jnp.mod(rank, num_keep)]
    out = jnp.where(keep[:, None], z, z[donor])
    return jnp.where(jnp.any(jnp.isfinite(values)), out, z)


def spread_starts(x, rng_key, num: int, radius: float = 2.0):
    """``x`` (d,) and ``num`` more points uniform in ``(-radius, radius)^d``: NumPyro's
    ``init_to_uniform`` in the flat unconstrained space, for `best_laplace`."""
    extra = jax.random.uniform(rng_key, (num, x.shape[0]), x.dtype, -radius, radius)
    return jnp.concatenate([x[None], extra])


def lower_factor(a):
    """Lower-triangular L with positive diagonal and L L^T = a a^T, by QR of a^T (no Cholesky of
    the product, which squares the condition number: float32 fails near 1e7)."""
    _, r = jnp.linalg.qr(a.T)
    sign = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(a.dtype)
    return (r * sign[:, None]).T


def gaussian_log_density(x, loc, scale_tril):
    """``log N(x; loc, L L^T)`` for a lower-triangular ``L`` with positive diagonal; ``x``
    (..., d)."""
    d = loc.shape[-1]
    y = jax.scipy.linalg.solve_triangular(scale_tril, (x - loc).T, lower=True).T
    return (-0.5 * jnp.sum(y**2, -1) - jnp.sum(jnp.log(jnp.diagonal(scale_tril)))
            - 0.5 * d * jnp.log(2 * jnp.pi))
