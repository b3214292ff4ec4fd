"""Writes svng_logistic_nuts.npz: the posterior mean and covariance of ``w`` in the
ill-conditioned logistic regression of tests/engines/test_svng.py
(`numpyro_gflow.datasets.models.correlated_logistic_model` on ``correlated_logistic_data()``),
from NUTS (4 chains x (1000 warm-up + 5000 draws), seed 1), with the data's digest. The chains'
ESS is printed: at about 10^4 or more the Monte Carlo error of a mean is about 0.01 posterior
sd per coordinate.

    .venv/bin/python tests/data/make_svng_logistic_nuts.py
"""

import sys
from pathlib import Path

import jax
import numpy as np
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS

from numpyro_gflow.datasets.models import correlated_logistic_data, correlated_logistic_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/, for support.py
from support import data_digest  # noqa: E402


if __name__ == "__main__":
    X, y = correlated_logistic_data()
    mcmc = MCMC(NUTS(correlated_logistic_model), num_warmup=1000, num_samples=5000,
                num_chains=4, chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(1), X, y)
    w = np.asarray(mcmc.get_samples(group_by_chain=True)["w"], np.float64)
    ess = effective_sample_size(w)
    print("ESS", np.round(ess, 0))
    flat = w.reshape(-1, w.shape[-1])
    np.savez(Path(__file__).parent / "svng_logistic_nuts.npz", mean=flat.mean(0),
             cov=np.cov(flat.T), min_ess=float(np.min(ess)), digest=data_digest(X, y))
