"""Writes hier_minibatch_nuts.npz: the posterior mean and sd of every scalar of
tests/engines/test_minibatch.py's hierarchical regression on all 500 rows, from NUTS (4 chains
x (2000 warm-up + 10,000 draws), seed 0). The chains' ESS is printed: at about 10^4 or more, the
Monte Carlo error of a mean is about 0.01 posterior sd.

    .venv/bin/python tests/data/make_hier_minibatch_nuts.py
"""

from pathlib import Path

import jax
import numpy as np
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS

from numpyro_gflow.datasets.models import grouped_regression as hier_model
from numpyro_gflow.datasets.models import grouped_regression_data as hier_arrays

if __name__ == "__main__":
    mcmc = MCMC(NUTS(hier_model), num_warmup=2000, num_samples=10000, num_chains=4,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(0), *hier_arrays())
    out = {}
    for k, v in mcmc.get_samples(group_by_chain=True).items():
        v = np.asarray(v, np.float64)
        flat = v.reshape((-1,) + v.shape[2:])
        out[f"{k}_mean"], out[f"{k}_sd"] = flat.mean(0), flat.std(0)
        print(k, "ESS", np.round(np.atleast_1d(effective_sample_size(v)), 0))
    np.savez(Path(__file__).parent / "hier_minibatch_nuts.npz", **out)
