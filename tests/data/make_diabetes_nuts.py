"""Writes diabetes_nuts_moments.npz: the posterior means and sds of the diabetes regression
(tests/support.py's diabetes_regression, the model of
benchmarks/experiments/mixflow_realdata/mixflow_realdata.py, on
numpyro_gflow.datasets.load_diabetes(): X and y standardised) from NUTS, 4 chains x
(2000 warm-up + 10,000 draws), seed 123.

    .venv/bin/python tests/data/make_diabetes_nuts.py

Monte Carlo error of the means: sd / sqrt(ESS), ESS of the order of 20,000 here, so about
0.007 posterior sd per coordinate (about 0.02 for the worst of the 12).
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS

from numpyro_gflow.datasets import load_diabetes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/, for support.py
from support import diabetes_regression as model  # noqa: E402

if __name__ == "__main__":
    X, y = (jnp.asarray(a, jnp.float32) for a in load_diabetes())
    mcmc = MCMC(NUTS(model), num_warmup=2000, num_samples=10000, num_chains=4,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(123), X, y)
    draws = mcmc.get_samples()
    out = {}
    for k, v in draws.items():
        out[k + "_mean"], out[k + "_sd"] = np.asarray(v).mean(0), np.asarray(v).std(0)
    np.savez(Path(__file__).parent / "diabetes_nuts_moments.npz", **out)
