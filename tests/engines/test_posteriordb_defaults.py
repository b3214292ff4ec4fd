"""Every engine with its defaults on three posteriordb posteriors nobody tuned them for
(kidiq, and arK's seven lighter engines, in the default run; arK's four heaviest and eight
schools with ``make test-slow``).

Short runs (100 steps): the floor of issue 17, that every engine ends finite and in the right
region with the settings a user never changes. Bounds are loose by design (the posteriordb
table in docs/posteriordb.md measures accuracy at 2000 steps); they are set from what the
defaults measured here, with room for seed noise, and sit orders of magnitude inside the
failures fixed (FBGVI 6-295 sds off on uncentred regressions, SVMD 88-1700 sds in the plain
dual, CoinKSDD's particles 5-1000 times too wide, non-finite stops at step 1-92).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import numpyro_gflow as gf
from numpyro_gflow.datasets import posteriordb

ENGINES = ("SVGD", "CoinSVGD", "KSDD", "CoinKSDD", "MSVGD", "SVMD", "CoinMSVGD", "SVNG",
           "IsoGaussianMixtureVI", "FBGVI", "MixFlow")
STEPS = 100

# (max |mean error| in reference sds, max sd relative error), per posterior; None: no bound.
# Measured at 100 steps, seed 0 (worst engine in brackets):
# - kidiq (d = 5, correlations -0.99, flat priors): means <= 0.22 (SVMD), sds <= 0.25 (SVNG)
#   except IsoGaussianMixtureVI, 3.3 sds / 99 % (isotropic components without a
#   preconditioner collapse onto the narrowest direction: its page says to use
#   preconditioner="adaptive" here; the 2000-step table has the same 3.3 / 99 %).
# - arK (d = 7, an AR(5)): means <= 0.18 (SVNG), sds <= 0.71 (IsoGaussianMixtureVI).
# - eight schools (d = 10, tau's half-Cauchy tail): means <= 4.8 (SVMD), sds <= 15 (SVMD);
#   every Stein engine is far from NUTS here, so only a blow-up is caught.
BOUNDS = {
    "kidiq-kidscore_interaction": (1.0, 1.0),
    "arK-arK": (1.0, 1.5),
    "eight_schools-eight_schools_noncentered": (10.0, None),
}
LOOSER = {("kidiq-kidscore_interaction", "IsoGaussianMixtureVI"): (6.0, 1.0)}


#: the engines that compile the most (7-11 s each on one core: SVNG's natural-gradient
#: solve, the density engines' Laplace set-up, MixFlow's tuning and draws); on arK they run
#: with `make test-slow` (the suite's 12-minute budget), on kidiq in the default run too
HEAVY = ("SVNG", "IsoGaussianMixtureVI", "FBGVI", "MixFlow")


@pytest.mark.parametrize("name, engines", [
    pytest.param("kidiq-kidscore_interaction", ENGINES, id="kidiq"),
    # ~35 s on one core each since the engines on one model share its traced bridge, init
    # program and Laplace program (it was ~70 s: arK waited in `make test-slow`)
    pytest.param("arK-arK", tuple(e for e in ENGINES if e not in HEAVY), id="arK-light"),
    pytest.param("arK-arK", HEAVY, marks=pytest.mark.slow, id="arK-heavy"),
    # eight schools: also with `make test-slow` (the default run has its mirrored-vs-unmirrored
    # comparison, tests/engines/test_posteriordb_engines.py)
    pytest.param("eight_schools-eight_schools_noncentered", ENGINES, marks=pytest.mark.slow,
                 id="eight_schools")])
def test_every_engine_default_ends_finite_near_the_posterior(name, engines):
    # one test per posterior (the model and its reference are loaded once; each engine still
    # compiles its own programs, most of the time this takes)
    post = posteriordb.load(name)
    failures = []
    for engine in engines:
        eng = getattr(gf, engine)(post.model)
        res = eng.run(jax.random.key(0), STEPS, *post.args, progress_bar=False, **post.kwargs)
        # the particles, or the density engines' 1000 end-of-run draws
        draws = res.get_samples()
        flat = post.flatten(draws)
        finite = all(np.all(np.isfinite(v)) for v in flat.values())
        err = post.errors(draws)
        mean_bound, sd_bound = LOOSER.get((name, engine), BOUNDS[name])
        ok = (res.status == "ok" and finite and err["max_mean_err"] < mean_bound
              and (sd_bound is None or err["max_sd_err"] < sd_bound))
        if not ok:
            failures.append((engine, res.status, finite, round(err["max_mean_err"], 3),
                             round(err["max_sd_err"], 3)))
    assert not failures, failures
