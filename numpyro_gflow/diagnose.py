"""Self-diagnosis: does a result describe the posterior? (`InferenceResult.diagnose`)

A user has no reference posterior to compare with, so every result checks itself:

- every engine: the points and their log densities are finite; the run went to its end; the
  objective has stopped moving over the last part of the run (`trend`); on mini-batches, the
  engine's settings are ones whose fixed point the batch noise does not bias (`minibatch`:
  e.g. deterministic FB-GVI's constant step);
- density engines (FBGVI, IsoGaussianMixtureVI, MixFlow): Pareto-smoothed importance sampling
  of the weights ``log p(z) - log q(z)`` on fresh draws (Yao, Vehtari, Simpson & Gelman 2018,
  "Yes, but did it work?"): the Pareto ``k_hat`` (unreliable above 0.7) and the weights'
  effective sample size; the PSIS itself is ArviZ's (``arviz_stats``); with reliable weights,
  how far they move the draws' means and sds (`psis_shift`: the fit's own draws are off);
- particle engines: a kernel Stein discrepancy goodness-of-fit test of the particles against
  the model's score with a wild bootstrap (`numpyro_gflow.core.kernels.ksd_test`), in the
  particles' own standardised coordinates;
- every engine with 10 points or more: climbs from uniform starts that end on a mode the
  points do not cover (`modes`);
- every engine with 20 points or more: the Pareto k_hat of each latent scalar's tails
  (constrained space): above 0.7 the points' mean is dominated by a few of them (`tails`);
  and Stein's identity ``E_p[(z_i - mean_i) d log p / dz_i] = -1`` per unconstrained
  coordinate (`spread`): points spread wider or narrower than the model's own curvature
  says break it (for a Gaussian posterior the expectation under the points is minus the
  squared ratio of their spread to the posterior's); and importance sampling from a Student t
  around the points, mixed with one around each high-density end of the `modes` climbs away
  from them (`is_moments`): with reliable PSIS weights, how far the reweighted draws'
  constrained means and sds are from the points' (a heavy tail the points do not reach, a
  mode they under-weight), and,
  from the same weighted draws, whether each scalar's sd can be estimated at all (`sd_k`: the
  Pareto k_hat of its importance-weighted squared deviation; at 1 or more its variance
  estimate has no finite mean).

``run`` calls `diagnose` and warns with `UnreliableResultWarning` when a check fails.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from numpyro_gflow.core.kernels import IMQKernel, ksd_test
from numpyro_gflow.core.numerics import climb
from numpyro_gflow.diagnostics import flatten_samples

__all__ = [
    "ON_RUN",
    "IS_DF",
    "IS_DRAWS",
    "IS_MODE_DISTANCE",
    "KSD_ALPHA",
    "MIN_ESS",
    "MOMENT_K_MAX",
    "PARETO_K_MAX",
    "PSIS_SHIFT_MAX",
    "SPREAD_MAX",
    "SPREAD_Z",
    "TAILS_INFLUENCE",
    "TAILS_K_MAX",
    "TREND_MIN_CHANGE",
    "TREND_Z",
    "UnreliableResultWarning",
    "diagnose",
    "ksd_check",
    "psis",
    "trend",
]

#: whether ``run`` checks its result when not told (``run(..., diagnose=None)``); set it to
#: False to skip the checks everywhere (the test suite does, outside the tests of the checks).
#: Its start value is False when the environment has ``NUMPYRO_GFLOW_DIAGNOSE=0`` (for a
#: child process, e.g. the test suite's runs of the example notebooks)
def _env_on(value: str | None) -> bool:
    """An environment flag's value: off for ``0``/``false``/``no``/``off``, on otherwise."""
    return (value or "1").strip().lower() not in ("0", "false", "no", "off")


ON_RUN = _env_on(os.environ.get("NUMPYRO_GFLOW_DIAGNOSE"))
#: Pareto k_hat above which importance weights (and the fit they test) are unreliable
#: (Yao et al. 2018; Vehtari et al., "Pareto smoothed importance sampling", 2024)
PARETO_K_MAX = 0.7
#: log-ratios that vary by less than this (nats) are constant (float32 round-off of an exact
#: fit): k_hat is reported as -inf
CONSTANT_RATIO = 1e-3
#: fewest effective draws the PSIS weights may have
MIN_ESS = 20.0
#: with reliable weights (k_hat <= 0.7), the largest move of a coordinate's mean (in sds) or
#: sd (factor - 1) from the fit's draws to their PSIS-reweighted version that still counts as
#: a fit of the posterior (the self-diagnosis issue's "wrong fit": 0.5 sd, 50 %). The
#: reweighted moments' own noise is about 1 / sqrt(ESS) sds: 0.03 at ESS 1000, 0.22 at the
#: least ESS allowed (20)
PSIS_SHIFT_MAX = 0.5
#: level of the particle engines' KSD test (a small level: false alarms cost trust too)
KSD_ALPHA = 0.01
#: a trend over the last fifth of the run counts when it exceeds this many standard errors ...
TREND_Z = 4.0
#: ... and this many nats (the objective's change from the first to the second half of the
#: window: an ELBO, or the particles' mean log density)
TREND_MIN_CHANGE = 0.5
#: the density engines' mode search: this many uniform starts in (-2, 2) of the unconstrained
#: space, each climbed by `MODE_STEPS` Adam steps (NumPyro's init_to_uniform region)
MODE_STARTS = 8
MODE_STEPS = 300
#: the points' tails: a latent scalar whose Pareto k_hat (constrained space) exceeds this has
#: no reliable mean from the points. On posteriordb's reference draws, 20 random subsets of
#: 100 per posterior: the largest k_hat over a posterior's scalars exceeded 0.7 in at most 5 %
#: of subsets on 12 of the 13, and in 60 % on one_comp_mm_elim_abs (half-Cauchy scales on a
#: ridge: its reference sds differ by 1.5x between the halves of the 10,000 draws) ...
TAILS_K_MAX = 0.7
#: ... and dropping the 5 % of its points farthest from the median moves its mean by more than
#: this many sds of the rest (k_hat alone, from 100 points, is noisy: 10 % of 100 exact draws
#: sets of a 100-d Gaussian have a scalar above 0.7). Both together, on the same subsets: 0 %
#: of the draw sets flagged on those 12 posteriors, 35 % on one_comp, 0 of 200 3-d Gaussian
#: sets, 12 % of log-normal(0, 1) sets (whose sd is 2.2x the median) and a set with 3 of 100
#: points 30 sds out
TAILS_INFLUENCE = 0.3
TAILS_MIN_POINTS = 20
#: the points' spread against the model's curvature: ``r_i = -mean((z_i - mean_i) s_i)``
#: (``s`` the score) is 1 for exact draws of any posterior (Stein's identity; integration by
#: parts in the unconstrained space) and the squared spread ratio ``(sd_q / sd_p)^2`` of a
#: Gaussian fit to a Gaussian posterior. A coordinate fails when ``r_i`` is beyond this factor
#: either way (spread off by more than sqrt(2): 41 % too wide or 29 % too narrow) ...
SPREAD_MAX = 2.0
#: ... and ``|r_i - 1|`` exceeds this many of its iid standard errors (conservative for
#: particles, whose mean errors are smaller than iid draws'). On posteriordb's reference
#: draws (200 random subsets of 100 per posterior, 11 posteriors): 0-2 % of subsets flagged
#: (0 % on 7 of them); CoinKSDD's particles on eight schools (tau 4.6x too wide, its mean
#: 2.9 sds off, KSD test p = 0.011) fail with r = 0.31-0.66 at 5-11 standard errors
SPREAD_Z = 4.0
#: particles fewer than this are not tested (the test has no power)
KSD_MIN_PARTICLES = 10
#: at most this many particles enter the KSD test (evenly spaced; O(n^2) memory)
KSD_MAX_PARTICLES = 2000
#: the importance-sampling check on the points (`is_moments`; the particles, or a density
#: engine's draws): this many draws from a multivariate Student t with `IS_DF` degrees of
#: freedom and the points' mean and covariance (unconstrained space), PSIS-weighted by
#: ``p / q``. With k_hat <= `PARETO_K_MAX`
#: the weighted draws' constrained moments are an estimate of the posterior's that does not
#: depend on the particles reaching its tails; a mean more than `PSIS_SHIFT_MAX` of their sds
#: from the particles', or an sd more than that fraction off, fails. Calibration
#: (benchmarks/experiments/diagnose/tail_sd.py, posteriordb reference draws, 40 random subsets
#: of 100 per posterior): 0 of 440 subsets flagged on 11 posteriors (garch not translatable);
#: on one_comp, whose K_m has kurtosis 515, 40 % flagged, where 35 % of such subsets have an
#: sd more than 50 % off the full reference's. The table's fits within NUTS accuracy with
#: saved points (SVGD, MixFlow, IsoMix-adaptive, the mean-field MixFlow): off <= 0.12
IS_DRAWS = 4000
IS_DF = 5.0
#: a climb's end (the `modes` check's) this far from the points' mean, in the points' own
#: covariance, centres a second t of the proposal (see `_is_moments_check`)
IS_MODE_DISTANCE = 3.0
#: the same weighted draws, per latent scalar j: the Pareto k_hat of h_j r, where h_j is the
#: squared deviation from the reweighted mean and r the importance ratio p / q (the
#: function-specific k_hat of Vehtari et al. 2024, "Pareto smoothed importance sampling":
#: the tail that matters for the expectation of h_j). At k_hat >= 1 the importance estimate
#: of j's variance has no finite mean (more draws do not make it converge): the posterior's
#: tail in j is too heavy for an sd to be read off a few thousand draws (or the points miss
#: that tail), so no sd the result reports for j can be trusted.
#: Calibration (tail_sd.py, 20 exact subsets of 100 per posterior): the largest k_hat over a
#: posterior's scalars reached 1 only on one_comp (K_m, kurtosis 515: median 1.3, 80 % of
#: subsets; every saved fit 1.13-1.53; NUTS's own 1000 draws are 15 % off in its sd there)
#: and once in 20 on eight schools (1.03); at most 0.68 on the other ten (garch
#: not translatable)
MOMENT_K_MAX = 1.0


class UnreliableResultWarning(UserWarning):
    """A result failed its own checks (`InferenceResult.diagnose`): do not trust it as is."""


def psis(log_ratios):
    """Pareto-smoothed importance sampling of ``log_ratios`` (n,) (``log p - log q`` up to a
    constant), by ArviZ: ``(normalised smoothed log weights (n,), k_hat)``; ``k_hat = -inf``
    when the ratios are constant to `CONSTANT_RATIO` (an exact fit)."""
    from arviz_stats.base.array import array_stats

    lr = np.asarray(log_ratios, dtype=np.float64)
    if np.ptp(lr) < CONSTANT_RATIO:
        # the fit is the posterior up to round-off: uniform weights, whose tail is bounded
        # (a Pareto fit is undefined there; bounded tails have k < 0)
        return np.full(lr.shape, -np.log(lr.size)), -math.inf
    # arviz's psislw smooths exp(-ary) (it is written for leave-one-out, ary = log-lik)
    log_w, k_hat = array_stats.psislw(-lr)
    return np.asarray(log_w), float(k_hat)


def trend(values, window: float = 0.2, min_len: int = 20):
    """Change of ``values`` between the halves of the last ``window`` of a trace, and its
    standard error (batch means, 5 batches per half). ``(nan, nan)`` if the window would be
    shorter than ``min_len`` steps (a run of fewer than 100 steps, by default)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    m = int(round(window * v.size))
    if m < min_len:
        return math.nan, math.nan
    w = v[-m:]
    half = m // 2
    a, b = w[:half], w[half:2 * half]
    nb = 5
    ba = a[: (half // nb) * nb].reshape(nb, -1).mean(1)
    bb = b[: (half // nb) * nb].reshape(nb, -1).mean(1)
    se = math.sqrt(ba.var(ddof=1) / nb + bb.var(ddof=1) / nb)
    return float(b.mean() - a.mean()), se


def _standardised(z, score):
    """Particles and scores in the particles' own whitened coordinates ``u = L^-1 (z - mean)``
    (``L`` the Cholesky factor of their covariance): the score becomes ``L^T s``. The test is
    then affine-invariant, so a posterior's scale or correlations do not set its power."""
    mean, L = _moments(z)
    u = jax.scipy.linalg.solve_triangular(L, (z - mean).T, lower=True).T
    return u, score @ L


def _moments(z):
    """The points' mean and the Cholesky factor of their covariance (relative jitter 1e-6)."""
    mean = jnp.mean(z, 0)
    c = z - mean
    cov = c.T @ c / (z.shape[0] - 1)
    d = cov.shape[0]
    jitter = 1e-6 * jnp.maximum(jnp.trace(cov) / d, 1e-30)
    return mean, jnp.linalg.cholesky(cov + jitter * jnp.eye(d, dtype=cov.dtype))


@jax.jit
def ksd_check(z, score, rng_key):
    """The particle engines' test: `ksd_test` of points ``z`` (n, d) with scores ``score``
    in the points' own standardised coordinates. ``(statistic, p_value)``."""
    u, s = _standardised(z, score)
    # unit scale (Gorham & Mackey's IMQ): the standardised points have unit covariance. On
    # N(0, I), 100 draws, level 0.01, 60 seeds, it rejected 0 % of exact draw sets, 100 % of
    # those shifted by 0.5 sd (1-d and 10-d), 70 % / 98 % of those 0.7x too narrow (1-d /
    # 10-d) and 8 % / 3 % of those 1.3x too wide; the median-heuristic scale: 8 % / 98 %
    # narrow, 22 % / 2 % wide
    return ksd_test(u, s, rng_key, kernel=IMQKernel())


def _check(out, name, value, ok, message):
    out["values"][name] = value
    if not ok:
        out["failed"].append(name)
        out["messages"][name] = message


def diagnose(result, rng_key=None, num_draws: int = 1000) -> dict:
    """The checks of one result (see the module). Returns ``{"ok": bool, "values": {check:
    value}, "failed": [check, ...], "messages": {check: what it means and what to try},
    "skipped": {check: why}}``."""
    rng_key = jax.random.key(0) if rng_key is None else rng_key
    out = {"ok": True, "values": {}, "failed": [], "messages": {}, "skipped": {}}
    engine = result.engine

    # -- every engine: finite pieces, a complete run, a settled objective
    z = jnp.asarray(result.unconstrained)
    lp = np.asarray(result.log_density())
    finite = bool(np.all(np.isfinite(np.asarray(z)))) and bool(np.all(np.isfinite(lp)))
    _check(out, "finite", finite, finite,
           f"{engine}: some points or their log densities are not finite; the result does not "
           "describe the posterior (check the model's density where the points are)")
    complete = result.status == "ok"
    _check(out, "complete", complete, complete,
           f"{engine}: the run did not reach its end ({result.status}); continue it with "
           "run(..., init_state=result.state)")
    coins = (result.stats or {}).get("coin_restarts_last")
    if coins:
        _check(out, "coin_restarts", int(coins), False,
               f"{engine}: coin betting's guard restarted {coins} particles at the last step: "
               "their directions are non-finite, so they are sent back to their start instead "
               "of moving. Check the model's density at the initial points (a finite but "
               "absurd value, e.g. -1e30), or use precondition='laplace' where the engine "
               "takes it")
    key = "elbo" if "elbo" in result.trace else (
        "mean_log_density" if "mean_log_density" in result.trace else None)
    if key is None:
        out["skipped"]["trend"] = f"{engine} traces no objective in nats"
    else:
        change, se = trend(result.trace[key])
        if math.isnan(change):
            out["skipped"]["trend"] = (f"the run is too short ({result.num_steps} steps) to "
                                       "tell a trend from noise")
        else:
            moving = abs(change) > max(TREND_Z * se, TREND_MIN_CHANGE)
            _check(out, "trend", change, not moving,
                   f"{engine}: the {key} still changes by {change:+.3g} over the last fifth "
                   f"of the run (standard error {se:.2g}): not converged; run more steps "
                   "(continue with init_state=result.state)")

    note = getattr(result, "minibatch_note", None)
    if note:
        _check(out, "minibatch", note, False, f"{engine}: {note}")

    if getattr(result, "streamed", False):
        out["skipped"]["fit"] = ("the run streamed its data (data_loader): the full-data "
                                 "density the fit checks need is not at hand")
    elif not finite:
        out["skipped"]["fit"] = "non-finite points"
    else:
        if result.sampler_available():
            _density_checks(out, result, rng_key, num_draws)
        else:
            _particle_checks(out, result, rng_key, z)
        # on the result's points (the particles, or a density engine's end-of-run draws)
        modes = _mode_check(out, result, rng_key, z, lp)
        _tails_check(out, result)
        _spread_check(out, result, z)
        _is_moments_check(out, result, rng_key, z, modes)
    out["ok"] = not out["failed"]
    return out


def _density_checks(out, result, rng_key, num_draws):
    engine = result.engine
    z, log_ratio = result.importance_log_ratios(rng_key, num_draws)
    log_ratio = np.asarray(log_ratio, dtype=np.float64)
    if not np.all(np.isfinite(log_ratio)):
        bad = int(np.sum(~np.isfinite(log_ratio)))
        _check(out, "pareto_k", math.inf, False,
               f"{engine}: {bad} of {log_ratio.size} fresh draws have a non-finite density "
               "ratio log p - log q: the fitted density puts mass where the posterior has "
               "none (or the model's density fails there)")
        return
    log_w, k_hat = psis(log_ratio)
    ess = float(1.0 / np.sum(np.exp(2 * log_w)))
    _check(out, "pareto_k", k_hat, k_hat <= PARETO_K_MAX,
           f"{engine}: Pareto k_hat {k_hat:.2f} > {PARETO_K_MAX} on {log_ratio.size} fresh "
           "draws: the fitted density misses part of the posterior (too narrow, a missed "
           "mode or tail); more steps, a richer family (MixFlow, IsoGaussianMixtureVI with "
           "more components) or importance='psis' draws if k_hat < 1")
    _check(out, "ess", ess, ess >= MIN_ESS,
           f"{engine}: the importance weights' effective sample size is {ess:.1f} of "
           f"{log_ratio.size}: the fitted density and the posterior barely overlap")
    if k_hat <= PARETO_K_MAX and ess >= MIN_ESS:
        # the weights are reliable: where they move the moments far, the fit's own draws are
        # off (a fit wider than the posterior has bounded weights, so a small k_hat, yet its
        # draws can be far from the posterior's)
        x = np.asarray(z, dtype=np.float64)[:, : result.bridge.dim]
        w = np.exp(log_w)[:, None]
        m_raw, sd_raw = x.mean(0), x.std(0)
        m_w = (w * x).sum(0)
        sd_w = np.sqrt(np.maximum((w * (x - m_w) ** 2).sum(0), 1e-300))
        shift = float(np.max(np.abs(m_raw - m_w) / sd_w))
        spread = float(np.max(np.abs(np.log(sd_raw / sd_w))))
        off = max(shift, math.expm1(spread))
        _check(out, "psis_shift", off, off <= PSIS_SHIFT_MAX,
               f"{engine}: reweighted by PSIS (k_hat {k_hat:.2f}, reliable), its draws' means "
               f"move by up to {shift:.2f} sds and their sds by a factor "
               f"{math.exp(spread):.2f}: the fit's own draws are off; use "
               "result.get_samples(n, key, importance='psis'), or run more steps")


def _mode_check(out, result, rng_key, z, point_lp):
    """Importance weights and Stein tests cannot see a mode the points never visit (one
    Gaussian on two separated modes has a small k_hat; particles on one mode pass a KSD
    test). So: climb from `MODE_STARTS` uniform starts; a climb that ends at a log density at
    least that of the median point, farther from the points' mean (Mahalanobis distance in
    their covariance) than every point, is a mode the result does not cover."""
    args, kwargs = result.model_args, result.model_kwargs
    n, d = z.shape
    if n < KSD_MIN_PARTICLES:
        out["skipped"]["modes"] = f"{n} points: too few to tell what they cover"
        return None

    ends, r_modes, mode_lp, r_points = result.bridge.program(
        ("mode_distances", MODE_STEPS, MODE_STARTS), _mode_distances, args, kwargs)(rng_key, z)
    mode_lp, r_modes = np.asarray(mode_lp), np.asarray(r_modes)
    ok = np.isfinite(mode_lp) & np.isfinite(r_modes)
    if not ok.any():
        out["skipped"]["modes"] = "no climb from a uniform start ended at a finite density"
        return None
    high = mode_lp >= np.median(point_lp)
    uncovered = int(np.sum(ok & high & (r_modes > np.max(np.asarray(r_points)))))
    _check(out, "modes", uncovered, uncovered == 0,
           f"{result.engine}: {uncovered} of {MODE_STARTS} climbs from uniform starts reach a "
           "point of high posterior density outside every point of the result: the posterior "
           "has a mode the result does not cover; use a family with several components "
           "(IsoGaussianMixtureVI) or more particles spread wider")
    # where the climbs of high density ended: `_is_moments_check` centres proposals there
    return np.asarray(ends, np.float64)[ok & high]


def _tails_check(out, result):
    """Whether the points' moments can be read off them: the Pareto k_hat of each latent
    scalar's tails in the constrained space (ArviZ's ``pareto_khat``, both tails; Vehtari et
    al., "Pareto smoothed importance sampling", 2024: above 0.7 a mean estimated from the
    points is dominated by a few of them). A posterior that heavy-tailed has no trustworthy
    mean at this sample size, and a fit whose points strayed far into a tail (a few particles
    far out on a ridge) shows the same way, which a Stein test barely sees."""
    from arviz_stats.base.array import array_stats

    samples = result.get_samples()
    n = result.num_samples
    if n < TAILS_MIN_POINTS:
        out["skipped"]["tails"] = f"{n} points: too few to fit a tail"
        return
    x, names = flatten_samples(samples, result.bridge.site_names)
    x = np.asarray(x, dtype=np.float64)
    keep = np.all(np.isfinite(x), axis=0) & (np.ptp(x, axis=0) > 0)
    if not keep.any():
        out["skipped"]["tails"] = "no varying latent scalar"
        return
    x, names = x[:, keep].T, [nm for nm, k in zip(names, keep) if k]
    with np.errstate(all="ignore"):
        k = np.asarray(array_stats.pareto_khat(x[:, None, :], r_eff=1.0),
                       dtype=np.float64).reshape(-1)
    k = np.where(np.isfinite(k), k, -np.inf)
    influence = _tail_influence(x)
    heavy = (k > TAILS_K_MAX) & (influence > TAILS_INFLUENCE)
    worst = int(np.argmax(np.where(heavy, influence, -np.inf))) if heavy.any() else int(
        np.argmax(k))
    _check(out, "tails", float(k[worst]), not heavy.any(),
           f"{result.engine}: the points of {names[worst]} have tails so heavy (Pareto k_hat "
           f"{k[worst]:.2f} > {TAILS_K_MAX}; dropping the 5 % farthest from the median moves "
           f"the mean by {influence[worst]:.2f} sds) that its mean and sd are dominated by a few "
           "points and are not reliable; read quantiles instead. If the posterior is not that "
           "heavy-tailed, some points have strayed far out (more steps, another engine)")


def _spread_check(out, result, z=None):
    """Stein's identity on the points (default: the result's), one unconstrained coordinate
    at a time (see `SPREAD_MAX`): the points' spread against what the model's curvature
    implies."""
    z = jnp.asarray(result.unconstrained) if z is None else z
    n = z.shape[0]
    if n < TAILS_MIN_POINTS:
        out["skipped"]["spread"] = f"{n} points: too few to compare their spread"
        return
    score = result.bridge.batch_score_jit(z, result.model_args, result.model_kwargs)
    if not np.all(np.isfinite(np.asarray(score))):
        out["skipped"]["spread"] = "the model's score is not finite at some points"
        return
    r, zscore = spread_ratios(np.asarray(z, np.float64), np.asarray(score, np.float64))
    # |log r|, infinite where r <= 0 (points the identity cannot describe at all)
    off = np.full(r.shape, np.inf)
    np.log(r, out=off, where=r > 0)
    off = np.abs(off)
    bad = (off > math.log(SPREAD_MAX)) & (zscore > SPREAD_Z)
    worst = int(np.argmax(np.where(bad, zscore, -np.inf))) if bad.any() else int(
        np.argmax(np.where(np.isfinite(off), off, -1.0)))
    one = {k: np.zeros((1,) + np.shape(v)) for k, v in result.bridge.prototype.items()}
    names = flatten_samples(one, result.bridge.site_names)[1]
    where = f"{names[worst]} (unconstrained)"
    ratio = float(r[worst])
    how = ("wider" if ratio > 1 else "narrower") if ratio > 0 else "off"
    spread = f"about {math.sqrt(ratio):.2g} times" if ratio > 0 else "not"
    _check(out, "spread", ratio, not bad.any(),
           f"{result.engine}: along {where} the points are spread {how} than the model's "
           f"curvature allows (Stein's identity E[(z - mean) * dlogp/dz] = -1 gives "
           f"{-ratio:.3g}, {zscore[worst]:.1f} standard errors off; for a Gaussian posterior: "
           f"spread {spread} the posterior's); more steps, or another engine (a density "
           "engine: FBGVI, MixFlow)")


def spread_ratios(z, score):
    """``(r, zscore)`` per coordinate of points ``z`` (n, d) with scores ``score``: ``r_i =
    -mean((z_i - mean_i) score_i)`` (1 at the posterior) and ``|r_i - 1|`` in iid standard
    errors."""
    w = (z - z.mean(0)) * score
    n = z.shape[0]
    r = -w.mean(0)
    se = w.std(0, ddof=1) / math.sqrt(n)
    with np.errstate(all="ignore"):
        zscore = np.where(se > 0, np.abs(r - 1.0) / se, np.where(r == 1.0, 0.0, np.inf))
    return r, zscore


def _tail_influence(x):
    """Per row of ``x`` (p, n): how far the mean moves, in sds of the rest, when the 5 % of
    points farthest from the median are dropped."""
    n = x.shape[1]
    m = max(1, int(round(0.05 * n)))
    med = np.median(x, axis=1, keepdims=True)
    order = np.argsort(np.abs(x - med), axis=1)
    keep = np.take_along_axis(x, order[:, : n - m], axis=1)
    with np.errstate(all="ignore"):
        return np.nan_to_num(np.abs(x.mean(1) - keep.mean(1)) / keep.std(1), nan=0.0,
                             posinf=np.inf)


def _mode_distances(bridge, args, kwargs, rng_key, z):
    """(`ModelBridge.program`) Climbs from `MODE_STARTS` uniform starts in (-2, 2)^d: where
    they end, the Mahalanobis distances of those ends and of the points ``z`` from the points'
    mean, and the log density at the ends."""
    def log_p(x):
        return bridge.log_density(x, args, kwargs)

    starts = jax.random.uniform(jax.random.fold_in(rng_key, 3), (MODE_STARTS, z.shape[1]),
                                z.dtype, -2.0, 2.0)
    modes = climb(log_p, starts, MODE_STEPS)
    mean, L = _moments(z)

    def dist(x):
        return jnp.linalg.norm(jax.scipy.linalg.solve_triangular(L, (x - mean).T,
                                                                  lower=True), axis=0)

    return modes, dist(modes), jax.vmap(log_p)(modes), dist(z)


def _is_moments_check(out, result, rng_key=None, z=None, modes=None):
    """`IS_DRAWS` draws of a Student t around the points (default: the result's), PSIS-weighted
    to the posterior: their constrained moments against the points' (see `IS_DRAWS`), and
    whether each scalar's sd can be estimated at all (see `MOMENT_K_MAX`). ``modes`` (m, d):
    where climbs of high density ended (`_mode_check`); those more than `IS_MODE_DISTANCE`
    from the points' mean and from each other centre a t of their own (same scale), an
    equal-weight mixture, so that mass on a mode the points under-weight is seen (particles
    98 to 2 on two equal modes: the points' t alone reaches the second mode too rarely for
    reliable weights)."""
    from arviz_stats.base.array import array_stats

    engine = result.engine
    rng_key = jax.random.key(0) if rng_key is None else rng_key
    z = jnp.asarray(result.unconstrained) if z is None else z
    zz = np.asarray(z, np.float64)
    n, d = zz.shape
    if n < TAILS_MIN_POINTS:
        out["skipped"]["is_moments"] = f"{n} points: too few to fit a proposal"
        return
    mean = zz.mean(0)
    cov = np.atleast_2d(np.cov(zz, rowvar=False))
    try:
        chol = np.linalg.cholesky(cov + 1e-9 * np.mean(np.diag(cov)) * np.eye(d))
    except np.linalg.LinAlgError:
        out["skipped"]["is_moments"] = "the particles' covariance is singular"
        return
    # NumPy's generator, seeded by the key: eager JAX sampling would compile programs here
    rng = np.random.default_rng([*np.asarray(jax.random.key_data(rng_key)).ravel().tolist(), 17])
    chi = rng.chisquare(IS_DF, IS_DRAWS)
    u = rng.standard_normal((IS_DRAWS, d)) / np.sqrt(chi / IS_DF)[:, None]
    centres, white = _proposal_centres(mean, chol, modes)
    # the centres share the draws evenly (stratified: the balance heuristic's estimate of a
    # uniform mixture); one centre is the points' own t
    which = np.arange(IS_DRAWS) % len(centres)
    draws = centres[which] + u @ chol.T
    # log q up to a constant (the weights are normalised): the mixture's, over its centres.
    # Whitened (L^-1), draw i from centre a sits at u_i + w_a - w_k from centre k
    maha = np.stack([np.sum((u + white[which] - wk) ** 2, axis=1) for wk in white])
    log_q = logsumexp(-0.5 * (IS_DF + d) * np.log1p(maha / IS_DF), axis=0)
    bridge = result.bridge
    log_p, constrained = _in_batches_of(n, draws.astype(np.asarray(z).dtype), result)
    finite = np.isfinite(log_p)
    if finite.sum() < IS_DRAWS // 2:
        out["skipped"]["is_moments"] = "the model's density is not finite at most proposal draws"
        return
    # a draw with a non-finite density gets weight 0 (and r = 0 below)
    log_r = np.where(finite, log_p - log_q, -1e30)
    log_w, k_hat = psis(log_r)
    if not k_hat <= PARETO_K_MAX:
        out["skipped"]["is_moments"] = (f"the importance weights are unreliable (k_hat "
                                        f"{k_hat:.2f} > {PARETO_K_MAX})")
        return
    w = np.exp(log_w - np.max(log_w))
    w = w / w.sum()
    sites = bridge.site_names
    xd, names = flatten_samples(constrained, sites)
    x, _ = flatten_samples({k: v for k, v in result.get_samples().items() if k in sites}, sites)
    xd, x = np.asarray(xd, np.float64), np.asarray(x, np.float64)
    xd = np.where(np.isfinite(xd), xd, 0.0)
    m_w = w @ xd
    sd_w = np.sqrt(np.maximum(w @ (xd - m_w) ** 2, 0.0))
    varying = (sd_w > 0) & np.all(np.isfinite(x), axis=0)
    if not varying.any():
        out["skipped"]["is_moments"] = "no varying latent scalar"
        return
    with np.errstate(all="ignore"):
        shift = np.where(varying, np.abs(x.mean(0) - m_w) / sd_w, 0.0)
        ratio = np.where(varying, x.std(0, ddof=1) / sd_w, 1.0)
    off = np.maximum(shift, np.abs(ratio - 1.0))
    # h_j r up to a constant factor (k_hat is scale-free)
    r = np.exp(log_r - np.max(log_r))
    h = (xd[:, varying] - m_w[varying]) ** 2 * r[:, None]
    with np.errstate(all="ignore"):
        k_sd = np.asarray(array_stats.pareto_khat(h.T[:, None, :], r_eff=1.0, tail="right"),
                          dtype=np.float64).reshape(-1)
    k_sd = np.where(np.isfinite(k_sd), k_sd, -np.inf)
    j = int(np.argmax(k_sd))
    heavy = [nm for nm, v in zip(names, varying) if v][j]
    _check(out, "sd_k", float(k_sd[j]), k_sd[j] < MOMENT_K_MAX,
           f"{engine}: the posterior sd of {heavy} cannot be estimated here: importance "
           f"sampling around the points gives its second moment a Pareto k_hat of "
           f"{k_sd[j]:.2f} >= {MOMENT_K_MAX} (its tail is too heavy for an sd read off a few "
           "thousand draws, or the points miss that tail); report its median and quantiles, "
           "not mean +- sd")
    worst = int(np.argmax(off))
    _check(out, "is_moments", float(off[worst]), off[worst] <= PSIS_SHIFT_MAX,
           f"{engine}: importance sampling from a Student t around the points (k_hat "
           f"{k_hat:.2f}, reliable) puts the mean of {names[worst]} {shift[worst]:.2f} of its "
           f"sds from the points' and its sd at {1 / ratio[worst]:.2f} times theirs: the "
           "points do not describe the posterior there (a tail they do not reach, or a set "
           "too narrow or off-centre); read quantiles rather than sds, use more points, or "
           "another engine (MixFlow, FBGVI)")


def _proposal_centres(mean, chol, modes):
    """The points' mean, then each of ``modes`` more than `IS_MODE_DISTANCE` (Mahalanobis, in
    the points' covariance with Cholesky factor ``chol``) from every centre kept before it.
    Returns the centres (k, d) and their whitened offsets ``L^-1 (c - mean)`` (k, d)."""
    d = mean.shape[0]
    centres, white = [mean], [np.zeros(d)]
    if modes is not None and len(modes):
        linv = np.linalg.inv(chol)       # once: O(d^3); each mode is then a product
        for m in modes:
            w = linv @ (m - mean)
            if all(np.linalg.norm(w - v) > IS_MODE_DISTANCE for v in white):
                centres.append(m)
                white.append(w)
    return np.stack(centres), np.stack(white)


def _in_batches_of(n, draws, result):
    """Log densities and constrained latent sites of ``draws`` (m, d), computed ``n`` rows at
    a time (the last batch padded): the programs the result's own ``n`` points compiled serve
    them, so the check compiles nothing new (4000 rows at once cost 2-3 s of compilation on
    the breast-cancer regression, a tenth of that to run)."""
    m = draws.shape[0]
    pad = (-m) % n
    rows = np.concatenate([draws, np.repeat(draws[:1], pad, axis=0)]) if pad else draws
    sites = result.bridge.site_names
    log_p, parts = [], []
    for i in range(0, m + pad, n):
        batch = rows[i:i + n]
        log_p.append(np.asarray(result._batch_log_density(batch), np.float64))
        c = result._constrain(batch)
        parts.append({k: np.asarray(c[k]) for k in sites})
    constrained = {k: np.concatenate([p[k] for p in parts])[:m] for k in sites}
    return np.concatenate(log_p)[:m], constrained


def _particle_checks(out, result, rng_key, z):
    engine = result.engine
    n = z.shape[0]
    if n < KSD_MIN_PARTICLES:
        out["skipped"]["ksd_test"] = f"{n} particles: too few for the KSD test"
        return
    if n > KSD_MAX_PARTICLES:
        z = z[np.linspace(0, n - 1, KSD_MAX_PARTICLES).astype(int)]
    score = result.bridge.batch_score_jit(z, result.model_args, result.model_kwargs)
    if not np.all(np.isfinite(np.asarray(score))):
        _check(out, "ksd_test", 0.0, False,
               f"{engine}: the model's score is not finite at some particles")
        return
    stat, p_value = ksd_check(z, score, rng_key)
    p_value = float(p_value)
    out["values"]["ksd"] = float(stat)
    _check(out, "ksd_test", p_value, p_value >= KSD_ALPHA,
           f"{engine}: the particles fail a kernel Stein discrepancy test against the model "
           f"(p = {p_value:.3g} < {KSD_ALPHA}): they are not spread like the posterior (too "
           "narrow, off-centre, or not yet converged); more steps, more particles, or a "
           "density engine (FBGVI, MixFlow)")
