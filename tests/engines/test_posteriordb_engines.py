"""Engines with their defaults on posteriordb posteriors that nobody tuned them for.

The reference is posteriordb's: 10,000 draws (ESS ~9,000-10,000 per parameter), so its own
Monte Carlo error is ~0.01 sd on a mean and ~0.7 % on an sd; an engine's 10,000 draws add as
much. The default-run checks are regressions of failure modes fixed in issue 17;
test_posteriordb_defaults.py runs every engine on kidiq by default, on four posteriors with make
test-slow (with the claims on kidiq, FBGVI and MixFlow at NUTS accuracy, and on earnings, the
mirrored engines' Laplace-whitened duals, also in the default run).
"""

from __future__ import annotations

import jax

import numpyro_gflow as gf
from numpyro_gflow.datasets import posteriordb

def _errors(post, res, num_draws=10_000):
    """Errors of a fitted density's ``num_draws`` fresh draws against the reference."""
    return post.errors(res.get_samples(num_draws, jax.random.key(1)))


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


def test_mirrored_engines_not_worse_than_unmirrored_on_a_positive_scale():
    # eight schools (non-centred): tau > 0 with a half-Cauchy prior, the case (MSVGD
    # and Coin MSVGD were 4.0-4.5 sds off, worse than Coin SVGD). With the defaults (100
    # particles, Laplace-whitened coordinates, 1000 steps), tau's mean error in reference sds,
    # measured seeds 0 / 1 with today's default kernel (bandwidth 2 d there): MSVGD 0.85 / 1.02
    # vs SVGD 1.77 / 1.72; Coin MSVGD 0.57 / 0.47 vs Coin SVGD 0.46 / 0.42 (with the median
    # heuristic before: 0.80 / 0.84 vs 1.47 / 1.44, 0.69 / 0.76 vs 0.67 / 0.77; on a second
    # machine, AMD EPYC, seed 0 gave Coin MSVGD 0.85 vs Coin SVGD 0.59): the coin pair is
    # equal within its seed-to-seed and machine-to-machine spread (up to 0.26 apart), so "not
    # worse" is tested with a margin of 0.35 sd, which covers that spread and fails the
    # issue's 4.0-4.5 sds. Every Stein engine is
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
