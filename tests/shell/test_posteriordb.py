"""The posteriordb translations (`numpyro_gflow.datasets.posteriordb`).

Default run: every posterior loads, its model traces with finite log density, and the names of
its reference draws map onto the model's sites. Slow run: NUTS on each translation matches
posteriordb's reference draws to Monte Carlo error -- the check that the NumPyro model is the
Stan model (a wrong prior, a missing Jacobian or a misread data field moves the posterior by
far more than the tolerance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import MCMC, NUTS
from numpyro.infer.initialization import init_to_uniform

from numpyro_gflow.datasets import posteriordb


@pytest.mark.parametrize("name", posteriordb.NAMES)
def test_posterior_loads_and_traces(name):
    post = posteriordb.load(name)
    assert post.dimension == sum(int(np.prod(v)) if isinstance(v, list) else int(v)
                                 for v in post.info["posterior"]["dimensions"].values())
    assert all(v.shape == (10_000,) for v in post.reference.values())
    assert sorted(set(post.chain.tolist())) == list(range(10))
    # one draw of NumPyro's uniform init through the model (eager, cheap): every reference
    # name maps onto a site
    model = handlers.substitute(handlers.seed(post.model, 0), substitute_fn=init_to_uniform)
    tr = handlers.trace(model).get_trace(*post.args, **post.kwargs)
    values = {k: site["value"][None] for k, site in tr.items()
              if site["type"] == "sample" or site["type"] == "deterministic"}
    flat = post.flatten(values)
    assert sorted(flat) == sorted(post.reference)
    assert all(np.asarray(v).shape == (1,) and np.isfinite(v).all() for v in flat.values())


def test_loading_twice_gives_the_same_posterior():
    a, b = (posteriordb.load("sblrc-blr") for _ in range(2))
    assert sorted(a.reference) == sorted(b.reference)
    np.testing.assert_array_equal(a.chain, b.chain)


def test_unknown_posterior_is_named():
    with pytest.raises(ValueError, match="unknown posteriordb posterior 'kidiq'"):
        posteriordb.load("kidiq")


#: parameters whose sd is not a usable target: one_comp's K_m and V_m have half-Cauchy-like
#: right tails (K_m's reference sd is 4.2 to 11.1 from one reference chain to the next; its
#: 99 % quantile 28 against a median of 1.0). Their quantiles from 10 % to 90 % are compared
#: instead. Measured (NUTS, 4 x 2500 draws, key 1): 1-75 % quantiles agree with the
#: reference to 1-2 %, but NUTS's 95 % / 99 % quantiles are shorter (K_m 7.5 / 17.6 against
#: 8.7 / 28.0; V_m 1.39 / 2.06 against 1.48 / 2.91): its upper tail along the K_m ~ V_m ridge
#: is under-explored or the translation differs there -- not settled (see the session note).
HEAVY_TAILED = {"one_comp_mm_elim_abs-one_comp_mm_elim_abs": ("K_m", "V_m")}


def _batch_se(x, batches):
    """Monte Carlo standard errors of the mean and the sd of ``x`` from ``batches`` equal
    consecutive batches (batch means; autocorrelation within a batch is accounted for)."""
    parts = np.array_split(np.asarray(x, np.float64), batches)
    means = np.array([p.mean() for p in parts])
    sds = np.array([p.std(ddof=1) for p in parts])
    return means.std(ddof=1) / np.sqrt(batches), sds.std(ddof=1) / np.sqrt(batches)


@pytest.mark.slow
@pytest.mark.parametrize("name", posteriordb.NAMES)
def test_nuts_matches_reference(name):
    """Means within 0.1 reference sd and sds within 10 % (posteriordb's "NUTS-level"
    accuracy), widened to 4 combined Monte Carlo standard errors where the draws themselves are
    that noisy. NUTS: 4 chains x 1000 draws (ESS ~1000-4000, so its mean error is
    ~0.02-0.03 sd); the reference: 10 chains x 1000 (ESS ~10,000). Medians are checked too
    (robust to the tails): within 0.1 reference sd or 4 SE of the batch medians; for
    `HEAVY_TAILED` parameters the 10-90 % quantiles replace the sd."""
    post = posteriordb.load(name)
    mcmc = MCMC(NUTS(post.model), num_warmup=1000, num_samples=1000, num_chains=4,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(0), *post.args, **post.kwargs)
    draws = post.flatten(mcmc.get_samples())
    for key, ref in post.reference.items():
        ref = np.asarray(ref, np.float64)
        got = np.asarray(draws[key], np.float64)
        r_mean, r_sd = ref.mean(), ref.std(ddof=1)
        se_rm, se_rs = _batch_se(ref, 10)          # the reference's chains
        se_gm, se_gs = _batch_se(got, 8)           # NUTS: 4 chains, each split in two
        mean_tol = max(0.1 * r_sd, 4 * np.hypot(se_rm, se_gm))
        assert abs(got.mean() - r_mean) < mean_tol, (key, got.mean(), r_mean, mean_tol)
        quantiles = (0.5,)
        if key in HEAVY_TAILED.get(name, ()):
            quantiles = (0.1, 0.25, 0.5, 0.75, 0.9)
        else:
            sd_tol = max(0.1 * r_sd, 4 * np.hypot(se_rs, se_gs))
            assert abs(got.std(ddof=1) - r_sd) < sd_tol, (key, got.std(ddof=1), r_sd, sd_tol)
        for q in quantiles:
            r_q = np.array([np.quantile(p, q) for p in np.array_split(ref, 10)])
            g_q = np.array([np.quantile(p, q) for p in np.array_split(got, 8)])
            q_tol = max(0.1 * r_sd, 4 * np.hypot(r_q.std(ddof=1) / np.sqrt(10),
                                                 g_q.std(ddof=1) / np.sqrt(8)))
            assert abs(np.quantile(got, q) - np.quantile(ref, q)) < q_tol, (key, q)
    assert int(jnp.sum(mcmc.get_extra_fields()["diverging"])) < 40     # < 1 % of the draws


def test_choosing_page_table_is_generated_from_the_results():
    # docs/choosing.md's ranking and recommended default are written by
    # `python -m benchmarks.posteriordb` from results.json (run as a program: tests import
    # nothing from benchmarks/); a hand edit or a results file changed without re-rendering
    # fails here
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.posteriordb", "--check-docs"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
