"""Coin SVGD against SVGD with a tuned learning rate, on real data.

Sharrock & Nemeth, "Coin Sampling: Gradient-Based Bayesian Inference without Learning Rates"
(ICML 2023) report that on Bayesian logistic regression (covertype) and Bayesian neural
networks (UCI regression sets) Coin SVGD, which has no learning rate, does about as well as
SVGD with the best learning rate from a grid. We check the same claim on the data shipped with
the package (``numpyro_gflow.datasets``, see its README;
benchmarks/experiments/coin_realdata/COIN_REALDATA.md has the full numbers):

* Bayesian logistic regression, Wisconsin breast cancer (569 x 30), 50 particles, mini-batches
  of 100, 2000 steps (the authors' code, github.com/louissharrock/Coin-SVGD bayes_lr.ipynb:
  covertype, 50 particles, batches of 100, 5000 steps, SVGD grid logspace(-5, 0, 10));
* a one-hidden-layer BNN (50 ReLU units), diabetes (442 x 10), 20 particles, mini-batches of
  100, 2000 steps (bayes_nn.ipynb: the same network, particle count, batch size and step
  count on UCI sets, after Liu & Wang 2016; SVGD grid logspace(-10, -0.5, 20)).

SVGD runs with the reference AdaGrad (the package default, as in the paper) over the grid
``LEARNING_RATES``; the "best" rate is the one with the highest mean test log predictive
density, picked on the test set itself as the paper did for its baselines (this favours SVGD).

What "within noise" means here. Both engines are scored on the same test examples, so we look
at the per-example difference (Coin minus best SVGD) of the metric: the log predictive density
of each test example, its 0/1 correctness (logistic regression) or its squared error (BNN).
The standard error of the mean of those differences, ``sd / sqrt(n_test)``, is how much the
comparison would move on another test set of the same size: the noise of the measurement.
Coin SVGD passes if it is not worse than the best SVGD by more than ``Z = 2`` such standard
errors (one-sided: doing better than the tuned baseline is not a failure). To show the check
can fail, the worst learning rate of the same grid must fail it, on every metric.

Seed-to-seed spread (initial particles, mini-batch order) was measured too, over seeds 0-2
(benchmarks/experiments/coin_realdata/COIN_REALDATA.md). For the logistic regression it is far
below the test-set SE
(sd of mean test lpd over seeds: Coin 0.0003, SVGD at 1e-2 0.0003, vs paired SE 0.0012). For
the BNN it is of the same order (Coin 0.020, SVGD at 0.1 0.050, vs paired SE 0.026-0.08), so
one seed alone is a noisy draw: the default tests check seed 0, the slow test averages each
example's scores over seeds 0-2 before comparing; each of the three seeds also passes alone.

Runtimes measured on this repo's 2-core CPU machine (shared, so +-30%), compilation included:
logistic test 21-28 s, BNN test 20-28 s (7 engines each, 2-7 s to compile, 0.3-0.9 s per
2000-step run once compiled); the slow test 15 s after them (it reuses their seed-0 runs from
a session cache), 83 s on its own.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.special import logsumexp

import numpyro_gflow as gf
from numpyro_gflow.datasets import load_breast_cancer as _raw_breast_cancer
from numpyro_gflow.datasets import load_diabetes as _raw_diabetes

LEARNING_RATES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)   # SVGD step sizes (reference AdaGrad)
NUM_STEPS = 2000
BATCH = 100
Z = 2.0                                     # tolerance, in paired standard errors


# ---------------------------------------------------------------------------------- data
def _split(n, train_frac=0.8, seed=0):
    """A fixed train/test split: a fixed permutation, the first 80% for training."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(train_frac * n))
    return perm[:n_train], perm[n_train:]


def load_breast_cancer():
    """Standardised (train statistics) features and 0/1 targets, 455 train / 114 test."""
    X, y = _raw_breast_cancer(standardize=False)
    assert X.shape == (569, 30), X.shape
    train, test = _split(len(y))
    X = (X - X[train].mean(0)) / X[train].std(0)
    as_f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return as_f32(X[train]), jnp.asarray(y[train]), as_f32(X[test]), jnp.asarray(y[test])


def load_diabetes():
    """Standardised X and y (train statistics), 354 train / 88 test; test y in original units."""
    X, y = _raw_diabetes(standardize=False)
    assert X.shape == (442, 10), X.shape
    train, test = _split(len(y))
    X = (X - X[train].mean(0)) / X[train].std(0)
    y_mean, y_sd = float(y[train].mean()), float(y[train].std())
    as_f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return (as_f32(X[train]), as_f32((y[train] - y_mean) / y_sd), as_f32(X[test]), as_f32(y[test]),
            y_mean, y_sd)


# ------------------------------------------------------------------ logistic regression
def logistic_model(X, y):
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0], subsample_size=BATCH) as idx:
        numpyro.sample("obs", dist.Bernoulli(logits=X[idx] @ w + b), obs=y[idx])


def logistic_scores(samples, X, y):
    """Per test example: 0/1 correctness of the posterior predictive, log predictive density."""
    logits = samples["b"][:, None] + samples["w"] @ X.T            # (particles, n_test)
    loglik = jnp.where(y == 1, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))
    lpd = logsumexp(loglik, axis=0) - jnp.log(loglik.shape[0])
    correct = (jnp.mean(jax.nn.sigmoid(logits), 0) > 0.5) == (y == 1)
    return {"acc": np.asarray(correct, np.float64), "lpd": np.asarray(lpd, np.float64)}


# --------------------------------------------------------------------------------- BNN
HIDDEN = 50


def bnn_model(X, y):
    """One hidden layer of 50 ReLU units, N(0, 1) priors on all weights and biases.

    Noise precision gamma ~ Gamma(1, rate 0.1) as in the paper. The paper (after Liu & Wang)
    also puts a Gamma(1, 0.1) hyperprior on the weights' precision; we fix it at 1 because
    with it the joint density is a funnel (unbounded as all weights -> 0 and their precision
    -> infinity) and, measured here, Coin SVGD (alpha 0, and the paper's alpha 100) and SVGD
    (step 1e-2) with 20 particles slide into it within 2000 steps: the network switches off and
    predicts the training mean (test RMSE 68-70; predicting the mean gives 70.3). SVGD with
    steps <= 1e-3 has not got there after 10000 steps. That compares how fast each engine finds
    the funnel's neck rather than how well it fits the posterior
    (benchmarks/experiments/coin_realdata/COIN_REALDATA.md).
    """
    d = X.shape[1]
    gamma = numpyro.sample("gamma", dist.Gamma(1.0, 0.1))
    W1 = numpyro.sample("W1", dist.Normal(0.0, 1.0).expand([d, HIDDEN]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1))
    W2 = numpyro.sample("W2", dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1))
    b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", X.shape[0], subsample_size=BATCH) as idx:
        mean = jax.nn.relu(X[idx] @ W1 + b1) @ W2 + b2
        numpyro.sample("y", dist.Normal(mean, 1.0 / jnp.sqrt(gamma)), obs=y[idx])


def bnn_init(rng_key, num_particles, d):
    """Initial particles (unconstrained) as in the paper's code (Liu & Wang's, times 2).

    W1 ~ N(0, 4/(d+1)), W2 ~ N(0, 4/(H+1)), biases 0, log gamma 0 (unit noise sd on the
    standardised target). NumPyro's default, uniform(-2, 2) for every coordinate, starts the
    network with outputs of sd ~20 (standardised units); measured: Coin SVGD then ends at test
    log-lik -6.12 vs -5.48 from this start, after the same 2000 steps.
    """
    k1, k2 = jax.random.split(rng_key)
    return {"W1": 2 * jax.random.normal(k1, (num_particles, d, HIDDEN)) / np.sqrt(d + 1),
            "b1": jnp.zeros((num_particles, HIDDEN)),
            "W2": 2 * jax.random.normal(k2, (num_particles, HIDDEN)) / np.sqrt(HIDDEN + 1),
            "b2": jnp.zeros((num_particles,)),
            "gamma": jnp.zeros((num_particles,))}


def bnn_scores(samples, X, y, y_mean, y_sd):
    """Per test example (original units): squared error of the posterior mean, log pred. density."""
    hidden = jax.nn.relu(jnp.einsum("td,ndh->nth", X, samples["W1"]) + samples["b1"][:, None, :])
    mean = ((jnp.einsum("nth,nh->nt", hidden, samples["W2"]) + samples["b2"][:, None]) * y_sd
            + y_mean)
    sd = y_sd / jnp.sqrt(samples["gamma"])[:, None]
    loglik = dist.Normal(mean, sd).log_prob(y)                       # (particles, n_test)
    lpd = logsumexp(loglik, axis=0) - jnp.log(loglik.shape[0])
    sq_err = (jnp.mean(mean, 0) - y) ** 2
    return {"sq_err": np.asarray(sq_err, np.float64), "lpd": np.asarray(lpd, np.float64)}


# ------------------------------------------------------------------------ experiment
# Engines and per-seed scores are cached for the session, so the slow test reuses the
# default tests' seed-0 runs (and each engine compiles once).
_ENGINES: dict = {}
_SCORES: dict = {}


def _engine(model, num_particles, name):
    key = (model.__name__, name)
    if key not in _ENGINES:
        if name == "coin":
            _ENGINES[key] = gf.CoinSVGD(model, num_particles=num_particles,
                                         precondition=None)
        else:
            lr = float(name.split()[1])
            _ENGINES[key] = gf.SVGD(model, num_particles=num_particles, step_size=lr,
                                     precondition=None)
    return _ENGINES[key]


def run_grid(model, num_particles, data, score, seeds, init=None):
    """Coin SVGD and SVGD at each learning rate; per-example scores averaged over seeds.

    Returns {name: {"scores": {metric: (n_test,)}, "seconds": wall time per seed, compilation
    included on a name's first seed}}.
    """
    X, y, *test = data
    out = {}
    for name in ["coin"] + [f"svgd {lr:g}" for lr in LEARNING_RATES]:
        engine, per_seed, seconds = _engine(model, num_particles, name), [], []
        for seed in seeds:
            key = (model.__name__, name, seed)
            if key not in _SCORES:
                t0 = time.perf_counter()
                init_params = None if init is None else init(jax.random.key(1000 + seed))
                result = engine.run(jax.random.key(seed), NUM_STEPS, X, y, progress_bar=False,
                                    init_params=init_params)
                _SCORES[key] = (score(result.get_samples(), *test), time.perf_counter() - t0)
            per_seed.append(_SCORES[key][0])
            seconds.append(_SCORES[key][1])
        out[name] = {"scores": {m: np.mean([s[m] for s in per_seed], 0) for m in per_seed[0]},
                     "seconds": seconds}
    return out


def paired(a, b):
    """Mean of the per-example difference a - b and its standard error."""
    d = np.asarray(a) - np.asarray(b)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


def summary(runs):
    """Print the table; return the best and worst SVGD runs (by mean test lpd)."""
    for name, run in runs.items():
        means = "  ".join(f"{m} {v.mean():.4f}" for m, v in run["scores"].items())
        print(f"{name:12s} {means}  (s per seed: {', '.join(f'{t:.1f}' for t in run['seconds'])})")
    svgd = {k: v for k, v in runs.items() if k.startswith("svgd")}
    ranked = sorted(svgd, key=lambda k: svgd[k]["scores"]["lpd"].mean(), reverse=True)
    return ranked[0], ranked[-1]


def check(runs, metric, higher_is_better, best, worst):
    """Coin vs best SVGD within Z paired SEs (one-sided); the worst rate must fail that check."""
    sign = 1.0 if higher_is_better else -1.0
    scores = lambda name: sign * runs[name]["scores"][metric]  # noqa: E731
    diff, se = paired(scores("coin"), scores(best))
    diff_bad, se_bad = paired(scores(worst), scores(best))
    print(f"{metric}: coin - best ({best}) = {sign * diff:+.4f} (SE {se:.4f}); "
          f"worst ({worst}) - best = {sign * diff_bad:+.4f} (SE {se_bad:.4f})")
    assert diff >= -Z * se, (metric, best, diff, se)
    # the check discriminates: the grid's worst learning rate, scored the same way, fails it
    assert diff_bad < -Z * se_bad, (metric, worst, diff_bad, se_bad)


def _logistic(seeds):
    data = load_breast_cancer()
    return run_grid(logistic_model, 50, data, logistic_scores, seeds)


def _bnn(seeds):
    *data, y_mean, y_sd = load_diabetes()
    d = data[0].shape[1]
    score = lambda s, X, y: bnn_scores(s, X, y, y_mean, y_sd)  # noqa: E731
    return run_grid(bnn_model, 20, data, score, seeds, init=lambda k: bnn_init(k, 20, d))


def _check_logistic(runs):
    best, worst = summary(runs)
    check(runs, "lpd", True, best, worst)
    check(runs, "acc", True, best, worst)


def _check_bnn(runs):
    best, worst = summary(runs)
    check(runs, "lpd", True, best, worst)
    check(runs, "sq_err", False, best, worst)


# ----------------------------------------------------------------------------- tests
def test_coin_svgd_logistic_regression_matches_tuned_svgd():
    _check_logistic(_logistic(seeds=(0,)))


@pytest.mark.slow   # ~13 s; the logistic-regression half of the protocol stays in the default run
def test_coin_svgd_bnn_regression_matches_tuned_svgd():
    _check_bnn(_bnn(seeds=(0,)))


@pytest.mark.slow
def test_coin_svgd_matches_tuned_svgd_over_seeds():
    # per-example scores averaged over 3 seeds (particles and mini-batches), then compared
    _check_logistic(_logistic(seeds=(0, 1, 2)))
    _check_bnn(_bnn(seeds=(0, 1, 2)))
