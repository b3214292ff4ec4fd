"""The core layer: pure JAX, no NumPyro.

One module per algorithm, each with NamedTuple ``State``/``Info`` and pure, jit-able
``init``/``step`` functions that take the PRNG key in the state and the target as plain JAX
callables (a score function ``(x (n, d), rng_key) -> (log_density (n,), score (n, d))``, a
Hessian-vector product, a log density). Shared pieces live in modules of their own:

* `kernels` -- RBF/IMQ kernels, the SVGD direction, Stein kernels and the KSD;
* `optim` -- optax transformations (the SVGD reference AdaGrad, coin betting);
* `numerics` -- Hessian-vector products, curvature, MAP climbs, the Laplace approximation;
* `mirror_maps` -- mirror maps on constrained domains.

Algorithms: `svgd`, `ksdd`, `lawgd`, `msvgd`, `svmd`, `svng`, `isomix`, `fbgvi`, `mixflow`.
The engines (`numpyro_gflow.engines`) bind them to NumPyro models.
"""

from numpyro_gflow.core import (
    fbgvi,
    isomix,
    kernels,
    ksdd,
    lawgd,
    mirror_maps,
    mixflow,
    msvgd,
    numerics,
    optim,
    svgd,
    svmd,
    svng,
)

__all__ = [
    "fbgvi",
    "isomix",
    "kernels",
    "ksdd",
    "lawgd",
    "mirror_maps",
    "mixflow",
    "msvgd",
    "numerics",
    "optim",
    "svgd",
    "svmd",
    "svng",
]
