"""Every engine with its defaults on posteriordb posteriors nobody tuned them for (kidiq in the
default run, with the mirrored engines' claim on earnings; every engine on earnings, arK and
eight schools with ``make test-slow``: each posterior costs ~60 s of CPU, most of it compiling
eleven engines' loops, and the default suite must stay under 12 minutes on CI's two cores).

Short runs (100 steps; a few engines longer where a claim below needs it): the floor of issue
17, that every engine ends finite and in the right region with the settings a user never
changes, and of issue 18, that a fit far off says so itself. The loose bounds are set from what
the defaults measured here, with room for seed noise, and sit orders of magnitude inside the
failures fixed (FBGVI 6-295 sds off on uncentred regressions, SVMD 88-1700 sds in the plain
dual, MSVGD 80 and Coin MSVGD 930, CoinKSDD's particles 5-1000 times too wide, non-finite stops
at step 1-92). The posteriordb table (docs/posteriordb.md) measures accuracy at 2000 steps.

The reference is posteriordb's: 10,000 draws (ESS ~9,000-10,000 per parameter), so its own
Monte Carlo error is ~0.01 sd on a mean and ~0.7 % on an sd.
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

KIDIQ = "kidiq-kidscore_interaction"
ARK = "arK-arK"
EARNINGS = "earnings-logearn_interaction"
EIGHT_SCHOOLS = "eight_schools-eight_schools_noncentered"

# (max |mean error| in reference sds, max sd relative error), per posterior; None: no bound.
# Measured at 100 steps, seed 0 (worst engine in brackets; 1000 steps where STEPS_FOR says),
# with every Stein engine's default kernel (bandwidth 2 d in the Laplace coordinates):
# - kidiq (d = 5, correlations -0.99, flat priors): means <= 0.053 (SVMD), sds <= 0.225
#   (SVMD; the others <= 0.063) except IsoGaussianMixtureVI, 3.3 sds / 99.8 %.
# - arK (d = 7, an AR(5)): means <= 0.072 (MixFlow), sds <= 0.084 (SVNG) except
#   IsoGaussianMixtureVI, sds 75 %.
# - earnings (d = 5, log earnings on height ~66 in, not centred, x male): means <= 0.036
#   (MSVGD, 1000 steps), sds <= 0.059 (SVGD), except SVMD (0.36 / 26 %, 1000 steps) and
#   IsoGaussianMixtureVI, 19.6 sds / 99.8 %.
# - eight schools (d = 10, tau's half-Cauchy tail): means <= 4.8 (SVMD), sds <= 15 (SVMD);
#   every Stein engine is far from NUTS here, so only a blow-up is caught.
# With the median-heuristic kernels (the Stein engines' default before 2026-12-06) the worst
# were 0.23 sd (SVNG, arK) and 25 % (SVNG, kidiq): the bounds, 4x the worst mean and 2x the
# worst sd measured now, would not catch that collapse (test_svgd's and test_coin's conjugate
# sd bounds do) but catch anything worse than it. SVMD's spread varies with the seed and the
# machine (below): its old bounds stay.
# IsoGaussianMixtureVI without a preconditioner (the paper's isotropic family) collapses onto
# the narrowest direction of a posterior whose correlations are -0.99 (its page says to use
# preconditioner="adaptive" there; the 2000-step table has the same errors); the result
# flags itself (the rule below).
BOUNDS = {KIDIQ: (0.3, 0.5), ARK: (0.3, 0.5), EARNINGS: (0.3, 0.5), EIGHT_SCHOOLS: (10.0, None)}
LOOSER = {(KIDIQ, "IsoGaussianMixtureVI"): (6.0, None),
          (ARK, "IsoGaussianMixtureVI"): (1.0, 1.5),
          (EARNINGS, "IsoGaussianMixtureVI"): (30.0, None),
          (KIDIQ, "SVMD"): (1.0, 1.0),
          (ARK, "SVMD"): (1.0, 1.5),
          # SVMD's spread varies with the seed and the machine (below)
          (EARNINGS, "SVMD"): (1.0, 3.0)}

#: a fit more than this far off (mean error in sds, or sd relative error) must say so itself:
#: ``result.diagnose()["ok"]`` False (issue 18's bar; only those fits are diagnosed here)
WRONG = 0.5

#: longer runs where a claim below needs them
STEPS_FOR = {(KIDIQ, "MixFlow"): 300, (EARNINGS, "MSVGD"): 1000,
             (EARNINGS, "CoinMSVGD"): 1000, (EARNINGS, "SVMD"): 1000}


def _nuts_accuracy_on_kidiq(post, res, err):
    # kidiq: kid_score on mom_iq (~100, not centred), mom_hs and their interaction, flat
    # priors: intercept and slopes correlate at -0.99, the Hessian's condition number is ~1e7
    # (beyond float32's resolution). Before issue 17 FBGVI ended 12 reference sds off (Adam's
    # climb stalls, the step set by the largest curvature never crosses the smallest) and the
    # mean-field MixFlow 12 sds off. Now the Laplace start and whitened coordinates
    # (numerics.whitening) make the posterior ~N(0, I) for the engine. Measured (4000 draws):
    # FBGVI 0.024 sd / 2.6 % (it stops at its fixed point within 100 steps), MixFlow 0.038 sd /
    # 2.5 % (300 reference steps); the bounds are what posteriordb calls NUTS accuracy, ~5 MC
    # standard errors away (4000 draws: ~0.016 sd per mean, ~1.1 % per sd).
    err = post.errors(res.get_samples(4000, jax.random.key(1)))
    return err["max_mean_err"] < 0.1 and err["max_sd_err"] < 0.1, err


def _mirrored_on_earnings(post, res, err):
    # sigma > 0 takes the entropic map. In the paper's dual coordinates MSVGD ended 80
    # reference sds off and Coin MSVGD 930 (one step size cannot cross curvatures 1e7 apart);
    # the Laplace-whitened dual (msvgd.preconditioned) makes it ~N(0, I). Measured (1000 steps,
    # 100 particles, seeds 0-3): max mean err 0.026-0.037 / 0.003-0.006 sd, max sd err
    # 0.022-0.024 / 0.024-0.027 with the default kernel (bandwidth 2 d there); with the median
    # heuristic the sds were 17 % small (SVGD's variance collapse). Bounds: what posteriordb
    # calls NUTS accuracy (0.1 sd, 10 %), ~3x the worst seed.
    return err["max_mean_err"] < 0.1 and err["max_sd_err"] < 0.1, err


def _svmd_on_earnings(post, res, err):
    # SVMD's precondition="auto" picks the Laplace-whitened dual when no site is on a simplex.
    # In the plain dual SVMD ended 1700 reference sds off (posteriordb table, 2000 steps). With
    # "auto" (1000 steps, 100 particles) the means land: max mean err 0.31 (seed 0, this
    # machine, today), 0.21 / 0.12 / 0.11 / 0.27 at seeds 0-3 on another (AMD EPYC). The
    # spread does not: SVMD's Nystrom kernel keeps few eigenpairs and its sds vary with the
    # seed and the machine's float32 rounding (max sd err 17 % / 64 %, 122 % / 25 % / 65 % /
    # 146 %; see docs/engines/mirrored.md), so its spread is held to the rule below (more than
    # 50 % off: flagged by its own checks) and a ceiling of 3.
    return err["max_mean_err"] < 1.0, err


CLAIMS = {(KIDIQ, "FBGVI"): _nuts_accuracy_on_kidiq, (KIDIQ, "MixFlow"): _nuts_accuracy_on_kidiq,
          (EARNINGS, "MSVGD"): _mirrored_on_earnings,
          (EARNINGS, "CoinMSVGD"): _mirrored_on_earnings,
          (EARNINGS, "SVMD"): _svmd_on_earnings}


@pytest.mark.parametrize("name", [
    pytest.param(KIDIQ, id="kidiq"),
    pytest.param(ARK, marks=pytest.mark.slow, id="arK"),
    pytest.param(EARNINGS, marks=pytest.mark.slow, id="earnings"),
    pytest.param(EIGHT_SCHOOLS, marks=pytest.mark.slow, id="eight_schools")])
def test_every_engine_default_ends_finite_near_the_posterior(name):
    # one test per posterior (the model and its reference are loaded once, and the engines on
    # one model share its traced bridge, initial points and Laplace search; each engine still
    # compiles its own loop, most of the time this takes: 40-60 s on one core)
    post = posteriordb.load(name)
    failures = []
    for engine in ENGINES:
        eng = getattr(gf, engine)(post.model)
        res = eng.run(jax.random.key(0), STEPS_FOR.get((name, engine), STEPS), *post.args,
                      progress_bar=False, **post.kwargs)
        # the particles, or the density engines' 1000 end-of-run draws
        draws = res.get_samples()
        finite = all(np.all(np.isfinite(v)) for v in post.flatten(draws).values())
        err = post.errors(draws)
        mean_bound, sd_bound = LOOSER.get((name, engine), BOUNDS[name])
        ok = (res.status == "ok" and finite and err["max_mean_err"] < mean_bound
              and (sd_bound is None or err["max_sd_err"] < sd_bound))
        row = (engine, res.status, finite, round(err["max_mean_err"], 3),
               round(err["max_sd_err"], 3))
        if ok and name != EIGHT_SCHOOLS and (err["max_mean_err"] > WRONG
                                             or err["max_sd_err"] > WRONG):
            verdict = res.diagnose()
            if verdict["ok"]:
                failures.append(row + ("far off, yet diagnose() passed it",))
        if ok and (name, engine) in CLAIMS:
            ok, detail = CLAIMS[name, engine](post, res, err)
            row = row + (detail["max_mean_err"], detail["max_sd_err"])
        if not ok:
            failures.append(row)
    assert not failures, failures


@pytest.mark.parametrize("engine", ["MSVGD", "CoinMSVGD"])
def test_mirrored_duals_on_earnings_reach_nuts_accuracy(engine):
    # the earnings claims of the sweep above, in the default run (the sweep is slow)
    post = posteriordb.load(EARNINGS)
    res = getattr(gf, engine)(post.model).run(jax.random.key(0), STEPS_FOR[EARNINGS, engine],
                                              *post.args, progress_bar=False, **post.kwargs)
    err = post.errors(res.get_samples())
    assert res.status == "ok"
    ok, detail = _mirrored_on_earnings(post, res, err)
    assert ok, (detail["max_mean_err"], detail["max_sd_err"])
