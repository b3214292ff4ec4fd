import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro_gflow as gf
from numpyro_gflow.diagnostics import energy_distance, ksd, mmd, summarize, energy_baseline
from numpyro_gflow.core.kernels import IMQKernel, stein_kernel_matrix
from conftest import linreg_model

D = 3
SIGMA = jnp.array([1.0, 2.0, 0.5])


def score(x):  # N(0, diag(SIGMA^2))
    return -x / SIGMA**2


def draws(key, n, shift=0.0, scale=1.0):
    return (jax.random.normal(key, (n, D)) * scale + shift) * SIGMA


def test_stein_kernel_matches_autodiff():
    x = jax.random.normal(jax.random.key(0), (6, D))
    kern = IMQKernel()
    k = lambda a, b: kern.profile(jnp.sum((a - b) ** 2))[0]  # noqa: E731

    def kp(a, b):
        sa, sb = score(a), score(b)
        gx = jax.grad(k, 0)(a, b)
        gy = jax.grad(k, 1)(a, b)
        tr = jnp.trace(jax.jacfwd(jax.grad(k, 1), 0)(a, b))
        return sa @ sb * k(a, b) + sa @ gy + sb @ gx + tr

    ref = jax.vmap(lambda a: jax.vmap(lambda b: kp(a, b))(x))(x)
    np.testing.assert_allclose(stein_kernel_matrix(kern, x, score(x), h=1.0), ref, rtol=1e-4,
                               atol=1e-5)


def test_ksd_small_for_exact_sample_large_for_wrong_ones():
    exact = draws(jax.random.key(1), 2000)
    k_exact = float(ksd(exact, score(exact)))
    shifted = draws(jax.random.key(1), 2000, shift=0.5)
    narrow = draws(jax.random.key(1), 2000, scale=0.5)
    k_shift = float(ksd(shifted, score(shifted)))
    k_narrow = float(ksd(narrow, score(narrow)))
    # measured: exact 0.085 (V-statistic bias ~ 1/sqrt(n)), shifted 0.67, too narrow 0.55
    assert k_exact < 0.12
    assert k_shift > 5 * k_exact and k_narrow > 5 * k_exact
    # a wrong sign in the score term is caught: the exact sample now looks bad
    assert float(ksd(exact, -score(exact))) > 7 * k_exact
    small = draws(jax.random.key(7), 250)
    assert float(ksd(small, score(small))) > 1.3 * k_exact  # ~0 only as n grows


def test_ksd_blocks_agree():
    x = draws(jax.random.key(2), 300)
    np.testing.assert_allclose(ksd(x, score(x), block_size=64), ksd(x, score(x)), rtol=1e-5)


def test_ksd_decreases_as_svgd_converges(conjugate):
    # from NumPyro's uniform start (precondition=None): far from the posterior at first
    res = gf.SVGD(conjugate.model, num_particles=100, step_size=0.01, trace_ksd=True,
                  precondition=None).run(jax.random.key(0), 500, conjugate.y, progress_bar=False)
    trace = res.trace["ksd"]
    assert trace[-1] < 0.2 * trace[0]
    assert np.mean(trace[-50:]) < np.mean(trace[50:100])
    final = gf.diagnostics.model_ksd(res)
    # same kernel, score and 100 particles; the trace's last value is taken before the last step,
    # model_ksd after it. Measured ratio 1.012 (keys 0-3: 0.984-1.017; the last 50 trace values
    # vary by < 1 %), so rel=0.2 is > 10x that; the start's KSD is ~30x larger (5.9 vs 0.20)
    assert final == pytest.approx(float(trace[-1]), rel=0.2)


def test_energy_distance_properties():
    a = draws(jax.random.key(3), 400)
    b = draws(jax.random.key(4), 400)
    c = draws(jax.random.key(5), 400, shift=0.5)
    assert energy_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert energy_distance(a, c) == pytest.approx(energy_distance(c, a), rel=1e-5)
    assert energy_distance(a, c) > 5 * energy_distance(a, b)
    assert mmd(a, a) == pytest.approx(0.0, abs=1e-3)
    assert mmd(a, c) ** 2 > 3 * mmd(a, b) ** 2  # measured 0.163^2 vs 0.084^2
    # dicts of sites are flattened the same way
    assert energy_distance({"x": a}, {"x": c}) == pytest.approx(energy_distance(a, c), rel=1e-6)


def test_summarize_against_reference(linreg_data, linreg_nuts):
    X, y = linreg_data
    res = gf.SVGD(linreg_model, num_particles=100, step_size=0.01).run(
        jax.random.key(0), 1500, X, y, progress_bar=False)
    s = summarize(res, linreg_nuts)
    assert list(s.table.index) == ["sigma", "w[0]", "w[1]", "w[2]"]
    # measured worst mean_err 0.085 (sigma; keys 0-3: 0.082-0.085, so SVGD's 100-particle bias,
    # not noise; the NUTS means' MC error is 0.016 sd); the bad sample below is off by > 2
    assert (s.table["mean_err"] < 0.2).all()
    # measured ED 0.0126 = 0.93 baseline (keys 0-3: 0.89-0.94; baseline 0.0136 is 100 NUTS draws
    # against the rest), bound 0.051 = 4x that; the bad sample is > 10x
    assert s.energy_distance < 3 * s.energy_baseline + 0.01
    assert s.ksd is not None and s.ksd > 0
    md = s.to_markdown()
    assert "mean_err" in md and "energy distance" in md
    # a bad sample is flagged: the prior-ish initial particles (NumPyro's uniform start,
    # precondition=None) are far from the posterior
    bad = gf.SVGD(linreg_model, num_particles=100, step_size=0.01, precondition=None).run(
        jax.random.key(0), 1, X, y, progress_bar=False)
    sb = summarize(bad, linreg_nuts)
    assert sb.energy_distance > 10 * s.energy_distance
    assert sb.table["mean_err"].max() > 2


def test_energy_baseline_shrinks_with_n(linreg_nuts):
    assert energy_baseline(linreg_nuts, 1000) < energy_baseline(linreg_nuts, 50)
