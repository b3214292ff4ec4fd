"""Engines with their defaults on posteriordb posteriors that nobody tuned them for.

The reference is posteriordb's: 10,000 draws (ESS ~9,000-10,000 per parameter), so its own
Monte Carlo error is ~0.01 sd on a mean and ~0.7 % on an sd; an engine's 10,000 draws add as
much. The default-run checks are the regressions of the failure modes fixed in issue 17;
test_posteriordb_defaults.py runs every engine on three posteriors.
"""

from __future__ import annotations

import jax
import pytest

import numpyro_gflow as gf
from numpyro_gflow.datasets import posteriordb

KIDIQ = "kidiq-kidscore_interaction"


def _errors(post, res, num_draws=10_000):
    """Errors of a fitted density's ``num_draws`` fresh draws against the reference."""
    return post.errors(res.get_samples(num_draws, jax.random.key(1)))


@pytest.mark.parametrize("engine, steps", [("FBGVI", 50), ("MixFlow", 300)])
def test_density_engine_defaults_reach_nuts_accuracy_on_an_uncentred_regression(engine, steps):
    # kidiq: kid_score on mom_iq (~100, not centred), mom_hs and their interaction, flat
    # priors: intercept and slopes correlate at -0.99, the Hessian's condition number is ~1e7
    # (beyond float32's resolution). Before issue 17 FBGVI ended 12 reference sds off (Adam's
    # climb stalls, the step set by the largest curvature never crosses the smallest) and the
    # mean-field MixFlow 12 sds off. Now the Laplace start and whitened coordinates
    # (numerics.whitening) make the posterior ~N(0, I) for the engine. Measured (4000 draws):
    # FBGVI 0.024 sd / 2.6 % (50 steps), MixFlow 0.038 sd / 2.5 % (300 reference steps);
    # the bounds are what posteriordb calls NUTS accuracy, ~5 MC standard errors away.
    post = posteriordb.load(KIDIQ)
    res = getattr(gf, engine)(post.model).run(jax.random.key(0), steps, *post.args,
                                              progress_bar=False, **post.kwargs)
    # 4000 draws: Monte Carlo error ~0.016 sd per mean, ~1.1 % per sd (MixFlow's draws each
    # cost a flow pass, the bulk of its time here)
    err = _errors(post, res, 4000)
    assert err["max_mean_err"] < 0.1, err
    assert err["max_sd_err"] < 0.1, err


def test_isomix_default_survives_a_start_with_an_absurd_density():
    # ARMA(1, 1): one of the ten uniform starts has an explosive theta, whose log density is a
    # finite -4e26 with an overflowing gradient; its climb cannot move and the component blew
    # up at the first step (non-finite at step 2 before). Now a climb ending more than
    # max(20, d) nats below the best restarts from a better one (numerics.replace_stragglers).
    # Measured (300 steps, 4000 draws): max mean err 0.044 sd, max sd err 0.43 (an isotropic
    # mixture without a preconditioner: the family, not the start); bound 0.2 sd on the means
    # (~12 MC standard errors), and no bound on the sds beyond finiteness.
    post = posteriordb.load("arma-arma11")
    res = gf.IsoGaussianMixtureVI(post.model).run(jax.random.key(0), 300, *post.args,
                                                  progress_bar=False, **post.kwargs)
    assert res.status == "ok"
    err = _errors(post, res, 4000)
    assert err["max_mean_err"] < 0.2, err


@pytest.mark.parametrize("engine", ["MSVGD", "CoinMSVGD"])
def test_mirrored_defaults_on_an_uncentred_regression_with_a_positive_scale(engine):
    # earnings: log earnings on height (~66 in, not centred) x male, sigma > 0 (the entropic
    # map). In the paper's dual coordinates MSVGD ended 80 reference sds off and Coin MSVGD 930
    # (one step size cannot cross curvatures 1e7 apart); the Laplace-whitened dual
    # (msvgd.preconditioned) makes it ~N(0, I). Measured (1000 steps, 50 particles): max mean
    # err 0.015 / 0.027 sd, max sd err 0.21 / 0.20 (SVGD's own variance shrinkage at 50
    # particles, 0.16 for SVGD); with today's defaults (100 particles) the posteriordb table
    # has 0.03 / 0.02 sd and 17 % at 2000 steps. Bounds 0.15 sd (~1.5 standard errors of a
    # 100-particle mean of iid draws) and 30 %.
    post = posteriordb.load("earnings-logearn_interaction")
    res = getattr(gf, engine)(post.model).run(jax.random.key(0), 1000, *post.args,
                                              progress_bar=False, **post.kwargs)
    err = post.errors(res.get_samples())
    assert err["max_mean_err"] < 0.15, err
    assert err["max_sd_err"] < 0.3, err


def test_svmd_default_uses_the_laplace_dual_on_an_uncentred_regression():
    # SVMD's precondition="auto" picks the Laplace-whitened dual when no site is on a simplex.
    # In the plain dual SVMD ended 1700 reference sds off on earnings (posteriordb table, 2000
    # steps). With "auto" (1000 steps, 100 particles) the means land: max mean err 0.38 / 0.13
    # sd at seeds 0 / 1 on one machine, 0.21 / 0.12 / 0.11 / 0.27 at seeds 0-3 on another (AMD
    # EPYC, fresh clone). The spread does not: SVMD's Nystrom kernel keeps few eigenpairs and
    # its sds vary with the seed and the machine's float32 rounding (max sd err 17 % / 64 %
    # there, 122 % / 25 % / 65 % / 146 % here; see docs/engines/mirrored.md). So the claim is
    # "the right place, and a spread more than 50 % off is flagged by the result's own checks"
    # (seeds 0 and 3 above fail the KSD test, p = 0.005 / 0.001; seed 1 passes), three orders
    # of magnitude inside the failure fixed.
    post = posteriordb.load("earnings-logearn_interaction")
    eng = gf.SVMD(post.model)
    res = eng.run(jax.random.key(0), 1000, *post.args, progress_bar=False, **post.kwargs)
    err = post.errors(res.get_samples())
    assert err["max_mean_err"] < 1.0, err
    verdict = res.diagnose()
    assert err["max_sd_err"] < 0.5 or not verdict["ok"], (err, verdict["values"])
    assert err["max_sd_err"] < 3.0, err


def test_mirrored_engines_not_worse_than_unmirrored_on_a_positive_scale():
    # eight schools (non-centred): tau > 0 with a half-Cauchy prior, the case (MSVGD
    # and Coin MSVGD were 4.0-4.5 sds off, worse than Coin SVGD). With the defaults (100
    # particles, Laplace-whitened coordinates, 1000 steps), tau's mean error in reference sds,
    # measured seeds 0 / 1: MSVGD 0.80 / 0.84 vs SVGD 1.47 / 1.44; Coin MSVGD 0.69 / 0.76 vs
    # Coin SVGD 0.67 / 0.77; on a second machine (AMD EPYC, the same packages) seed 0 gave
    # Coin MSVGD 0.85 vs Coin SVGD 0.59: the coin pair is equal within its seed-to-seed and
    # machine-to-machine spread (0.59-0.85), so "not worse" is tested with a margin of 0.35
    # sd, which covers that spread and fails the 4.0-4.5 sds. Every Stein engine is
    # far from NUTS here (tau's tail; see docs/engines/mirrored.md); the claim tested is the
    # comparison.
    post = posteriordb.load("eight_schools-eight_schools_noncentered")

    def tau_err(engine):
        res = getattr(gf, engine)(post.model).run(jax.random.key(0), 1000, *post.args,
                                                  progress_bar=False, **post.kwargs)
        err = post.errors(res.get_samples())
        return float(err["mean_err"][err["names"].index("tau")])

    svgd, msvgd = tau_err("SVGD"), tau_err("MSVGD")
    assert msvgd < svgd, (msvgd, svgd)
    coin, coin_m = tau_err("CoinSVGD"), tau_err("CoinMSVGD")
    assert coin_m < coin + 0.35, (coin_m, coin)
