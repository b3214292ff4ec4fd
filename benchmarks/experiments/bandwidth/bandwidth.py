"""Cost of the median-heuristic bandwidth: jnp.median (a full sort) vs exact selection.

    python -m benchmarks.experiments.bandwidth.bandwidth

Both give the same number (the median of all n^2 squared distances); the table shows ms per call
and the whole SVGD step for context.
"""

import time

import jax
import jax.numpy as jnp
import optax

from numpyro_gflow.core import svgd
from numpyro_gflow.core.kernels import RBFKernel, median_heuristic, pairwise_sq_dists


def _time(f, *args, repeat=100):
    jax.block_until_ready(f(*args))
    t = time.perf_counter()
    for _ in range(repeat):
        out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / repeat * 1e3


def main():
    print("| n | d | jnp.median (ms) | selection (ms) | same value | SVGD step (ms) |")
    print("|---|---|---|---|---|---|")
    for n in (100, 300, 1000):
        d = 10
        x = jax.random.normal(jax.random.key(0), (n, d))
        D = pairwise_sq_dists(x)
        sort_ms = _time(jax.jit(jnp.median), D)
        sel_ms = _time(jax.jit(median_heuristic), D)
        same = bool(jnp.median(D) == median_heuristic(D))
        opt = optax.sgd(0.1)
        state = svgd.init(x, opt, jax.random.key(0))
        step = jax.jit(lambda s: svgd.step(s, lambda z, k: (jnp.zeros(n), -z), RBFKernel(), opt))
        step_ms = _time(step, state)
        print(f"| {n} | {d} | {sort_ms:.3f} | {sel_ms:.3f} | {same} | {step_ms:.3f} |")


if __name__ == "__main__":
    main()
