"""gf.summary / print_summary: the per-parameter table and the verdict under it."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import numpyro_gflow as gf


def model():
    numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("s", dist.HalfNormal(1.0))
    numpyro.sample("theta", dist.Normal(0.0, 1.0).expand([2, 2]).to_event(2))


def _result(z):
    bridge = gf.ModelBridge.from_model(model)
    return gf.InferenceResult("SVGD", bridge, (), {}, jnp.asarray(z),
                              {"mean_log_density": np.zeros(5)})


def test_summary_numbers_are_the_points_moments_and_quantiles():
    z = jax.random.normal(jax.random.key(0), (200, 6))
    res = _result(z)
    out = gf.summary(res)
    s = res.get_samples()
    for site in ("mu", "s", "theta"):
        x = np.asarray(s[site], np.float64)
        np.testing.assert_allclose(out.stats[site]["mean"], x.mean(0), rtol=1e-6)
        np.testing.assert_allclose(out.stats[site]["std"], x.std(0, ddof=1), rtol=1e-6)
        np.testing.assert_allclose(out.stats[site]["5.0%"], np.quantile(x, 0.05, axis=0),
                                   rtol=1e-6)
        np.testing.assert_allclose(out.stats[site]["95.0%"], np.quantile(x, 0.95, axis=0),
                                   rtol=1e-6)
    # s is positive (HalfNormal): the table is in the constrained space
    assert out.stats["s"]["5.0%"] > 0
    # one row per scalar, NumPyro's names
    labels = [label for label, _ in out.rows()]
    assert labels == ["mu", "s", "theta[0,0]", "theta[0,1]", "theta[1,0]", "theta[1,1]"]
    assert set(gf.summary(res, prob=0.5).stats["mu"]) == {"mean", "std", "median", "25.0%",
                                                            "75.0%"}
    with pytest.raises(ValueError, match="prob"):
        gf.summary(res, prob=1.5)


def test_summary_counts_distinct_particles_and_shows_the_verdict(capsys):
    z = jax.random.normal(jax.random.key(1), (10, 6))
    res = _result(jnp.concatenate([z, z[:4]]))      # 14 particles, 4 of them repeated
    text = str(gf.summary(res))
    assert "14 particles, 10 distinct" in text
    assert "checks: not run" in text
    res.diagnostics = {"ok": False, "values": {"finite": True, "ksd_test": 0.001},
                       "failed": ["ksd_test"], "skipped": {},
                       "messages": {"ksd_test": "SVGD: the particles fail a KSD test"}}
    res.print_summary()
    printed = capsys.readouterr().out
    assert "checks: FAILED ksd_test (finite yes, ksd_test p = 0.001)" in printed
    assert "- SVGD: the particles fail a KSD test" in printed
    assert "theta[1,1]" in printed
