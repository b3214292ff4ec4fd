"""Shared numerics on plain JAX: the float32-safe whitening and the affine coordinates."""

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_gflow.core import numerics


def _regression_precision():
    # the Hessian of a regression on an uncentred predictor with an interaction (x ~ 100 +- 15,
    # a 0/1 group, their product), as posteriordb's kidiq: condition number ~1e7 in float64
    k1, k2 = jax.random.split(jax.random.key(0))
    x = 100.0 + 15.0 * np.asarray(jax.random.normal(k1, (400,)), np.float64)
    g = (np.asarray(jax.random.uniform(k2, (400,))) < 0.8).astype(np.float64)
    design = np.stack([np.ones_like(x), g, x, g * x], 1)
    return design.T @ design / 18.0**2


def test_whitening_inverts_an_ill_conditioned_hessian_in_float32():
    prec = _regression_precision()
    assert np.linalg.cond(prec) > 1e6
    p32 = jnp.asarray(prec, jnp.float32)
    w = numerics.whitening(lambda z: -0.5 * z @ p32 @ z, jnp.zeros(4, jnp.float32))
    assert w.dtype == jnp.float32
    # W^T H W = I in float64 arithmetic: every direction's variance within 1 %
    u = np.asarray(w, np.float64).T @ prec @ np.asarray(w, np.float64)
    np.testing.assert_allclose(np.linalg.eigvalsh(u), 1.0, rtol=0.01)
    # and the marginal sds, which the old plain floored eigen-decomposition halved
    sd = np.sqrt(np.diag(np.linalg.inv(prec)))
    np.testing.assert_allclose(np.sqrt(np.diag(np.asarray(w, np.float64) @ np.asarray(w).T)),
                               sd, rtol=0.01)
    # what it replaced: eigen-decomposition of H itself, eigenvalues floored at 1e-6 of the top
    lam, vec = numerics.floored_curvature(lambda z: -0.5 * z @ p32 @ z, jnp.zeros(4))
    plain = np.sqrt(np.diag(np.asarray((vec / lam) @ vec.T, np.float64)))
    assert np.max(np.abs(plain / sd - 1)) > 0.1


def test_affine_coordinates_map_scores_and_hessians():
    prec = jnp.asarray(_regression_precision(), jnp.float32)
    shift = jnp.array([1.0, -2.0, 0.5, 0.0])

    def log_p(z):
        return -0.5 * (z - shift) @ prec @ (z - shift)

    w = numerics.whitening(log_p, shift)
    coords = numerics.Affine.of(shift, w)
    score = coords.score_fn(lambda z, key: jax.vmap(jax.value_and_grad(log_p))(z))
    u = jax.random.normal(jax.random.key(1), (3, 4))
    lp, s = score(u, None)
    # in u the target is N(0, I): score -u, log density -|u|^2 / 2
    np.testing.assert_allclose(s, -u, atol=0.02)
    np.testing.assert_allclose(lp, -0.5 * jnp.sum(u**2, 1), rtol=0.02)
    hvp = coords.hvp_fn(lambda x, v, key: numerics.hvp(log_p, x, v))
    np.testing.assert_allclose(hvp(u[0], u[1], None), u[1], atol=0.02)
    np.testing.assert_allclose(coords.to_z(jnp.zeros(4)), shift)
    assert np.isclose(float(coords.log_det), np.linalg.slogdet(np.asarray(w, np.float64))[1],
                      rtol=1e-4)


def _funnel(z):
    # a centred hierarchical model's log density in (mu, log tau, a[0..3]): N(a | mu, tau) per
    # group, a flat-ish prior, the log tau Jacobian; it grows without bound as tau -> 0 with
    # every a at mu, so it has no mode
    mu, log_tau, a = z[0], z[1], z[2:]
    tau = jnp.exp(log_tau)
    lik = -0.5 * jnp.sum((jnp.array([1.0, 1.2, 0.9, 1.1]) - a) ** 2 / 0.1**2)
    return (lik - 0.5 * mu**2 / 25 - 0.5 * tau**2 / 4 + log_tau
            + jnp.sum(-0.5 * ((a - mu) / tau) ** 2 - log_tau))


def test_best_laplace_keeps_converged_modes_and_falls_back_where_there_is_no_mode():
    starts = numerics.spread_starts(jnp.zeros(6), jax.random.key(0), 7)
    # the funnel: Newton runs down its neck (decrement measured 1e7-1e8 there); the
    # identity coordinates around the first start come back instead of a degenerate Gaussian
    mode, w = jax.jit(lambda s: numerics.best_laplace(_funnel, s, 200))(starts)
    np.testing.assert_array_equal(mode, starts[0])
    np.testing.assert_array_equal(w, jnp.eye(6))
    # a Gaussian: its mode and covariance factor (decrement ~0)
    cov = jnp.diag(jnp.array([4.0, 0.01, 1.0, 9.0, 0.25, 1.0]))
    mean = jnp.arange(6.0)
    gauss = lambda z: -0.5 * (z - mean) @ jnp.linalg.solve(cov, z - mean)  # noqa: E731
    mode, w = jax.jit(lambda s: numerics.best_laplace(gauss, s, 200))(starts)
    np.testing.assert_allclose(mode, mean, atol=1e-3)
    np.testing.assert_allclose(w @ w.T, cov, rtol=1e-3, atol=1e-6)
    assert float(numerics.newton_decrement(gauss, mode, w)) < 1e-6
