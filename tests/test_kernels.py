import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_gflow.kernels import (
    IMQKernel, RBFKernel, kth_smallest, median_heuristic, pairwise_sq_dists, svgd_direction,
)


@pytest.mark.parametrize("n", [7, 10, 101])
def test_median_heuristic_equals_numpy_median(n):
    x = jax.random.normal(jax.random.key(n), (n, 3))
    D = pairwise_sq_dists(x)
    assert float(median_heuristic(D)) == pytest.approx(float(np.median(np.asarray(D))), rel=1e-6)


def test_median_with_ties_and_repeated_particles():
    x = jnp.array([[0.0], [0.0], [1.0], [1.0], [3.0], [3.0]])
    D = pairwise_sq_dists(x)
    assert float(median_heuristic(D)) == float(np.median(np.asarray(D)))
    v = jnp.array([5.0, 1.0, 1.0, 3.0, 0.0, 2.0, 2.0])
    for k in range(len(v)):
        assert float(kth_smallest(v, k)) == float(jnp.sort(v)[k])


def _phi_by_autodiff(k, x, score):
    # the SVGD direction straight from its definition, kernel gradients by autodiff
    def phi_i(xi):
        kij = jax.vmap(lambda xj: k(xj, xi))(x)
        gk = jax.vmap(jax.grad(lambda xj: k(xj, xi)))(x)
        return jnp.mean(kij[:, None] * score + gk, axis=0)
    return jax.vmap(phi_i)(x)


@pytest.mark.parametrize("kernel", [RBFKernel(), RBFKernel(0.7), IMQKernel(), IMQKernel(0.5, -0.3, 2.0)])
def test_svgd_direction_matches_definition(kernel):
    x = jax.random.normal(jax.random.key(0), (12, 4))
    score = -x  # standard normal target
    phi, h = svgd_direction(kernel, x, score)
    f = lambda a, b: kernel.profile(jnp.sum((a - b) ** 2) / h)[0]  # noqa: E731
    np.testing.assert_allclose(phi, _phi_by_autodiff(f, x, score), rtol=2e-4, atol=1e-5)
    if isinstance(kernel, RBFKernel) and kernel.bandwidth == "median":
        D = np.asarray(pairwise_sq_dists(x))
        assert float(h) == pytest.approx(np.median(D) / np.log(13), rel=1e-5)


def test_kernel_arguments_are_validated():
    with pytest.raises(ValueError, match="bandwidth"):
        RBFKernel("mean")
    with pytest.raises(ValueError, match="bandwidth"):
        RBFKernel(-1.0)
    with pytest.raises(ValueError, match="beta"):
        IMQKernel(beta=0.5)
