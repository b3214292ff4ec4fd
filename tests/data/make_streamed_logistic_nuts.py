"""Writes streamed_logistic_nuts.npz: the posterior mean and sd of (b, w) of
tests/engines/test_streaming.py's logistic regression on all 10^4 rows of its ``make_data``,
from NUTS (4 chains x (1000 warm-up + 5000 draws), seed 1), keyed by the data's digest (the
test refuses a reference made for other data). The chains' ESS is printed: at about 10^4 or
more the Monte Carlo error of a mean is about 0.01 posterior sd.

    .venv/bin/python tests/data/make_streamed_logistic_nuts.py
"""

import sys
from pathlib import Path

import jax
import numpy as np
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("engines", ".")]
from support import data_digest  # noqa: E402
from test_streaming import REFERENCE, full_model, make_data  # noqa: E402

if __name__ == "__main__":
    X, y = make_data(10_000)
    mcmc = MCMC(NUTS(full_model), num_warmup=1000, num_samples=5000, num_chains=4,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(1), X, y)
    s = mcmc.get_samples(group_by_chain=True)
    theta = np.concatenate([np.asarray(s["b"])[..., None], np.asarray(s["w"])], -1)
    print("ESS", np.round(effective_sample_size(theta), 0))
    flat = theta.reshape(-1, theta.shape[-1]).astype(np.float64)
    np.savez(REFERENCE, mean=flat.mean(0), sd=flat.std(0), digest=data_digest(X, y))
