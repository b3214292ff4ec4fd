"""Writes linreg_nuts_draws.npz: NUTS draws of tests/conftest.py's linreg_model on its data
(``linreg_arrays()``: X (50, 3), y (50,), stored in the file too), for the ``linreg_nuts``
fixture. 4 chains x (2000 warm-up + 25,000 draws), seed 11; every 25th draw is kept, 4000 in
all: at that thinning the draws are nearly independent (the chains' ESS is close to their
length here), so the Monte Carlo error of a mean is about sd / sqrt(4000) = 0.016 sd.

    .venv/bin/python tests/data/make_linreg_nuts.py
"""

import sys
from pathlib import Path

import jax
import numpy as np
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/, for conftest.py
from conftest import linreg_arrays, linreg_model  # noqa: E402

if __name__ == "__main__":
    X, y = linreg_arrays()
    mcmc = MCMC(NUTS(linreg_model), num_warmup=2000, num_samples=25000, num_chains=4,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(11), X, y)
    by_chain = mcmc.get_samples(group_by_chain=True)
    out = {"X": np.asarray(X), "y": np.asarray(y)}
    for k, v in by_chain.items():
        v = np.asarray(v)
        thinned = v[:, ::25]
        out[k] = thinned.reshape((-1,) + v.shape[2:])
        ess = effective_sample_size(thinned)
        print(k, "thinned ESS", np.round(np.atleast_1d(ess), 0), "of", out[k].shape[0])
    np.savez(Path(__file__).parent / "linreg_nuts_draws.npz", **out)
