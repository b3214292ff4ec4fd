"""The engine contract: every engine on one of two bases, no hidden state, init_state, MCMC."""

import jax
import numpy as np
import pytest
from numpyro.infer import MCMC

import numpyro_gflow as gf
from numpyro_gflow.engines.base import DensityEngine, Engine, ParticleEngine
from conftest import linreg_model
from support import SMALL_ENGINES, gaussian2

PARTICLE = {k: v for k, v in SMALL_ENGINES.items()
            if issubclass(getattr(gf, k, type(None)), ParticleEngine)}
DENSITY = {k: v for k, v in SMALL_ENGINES.items()
           if issubclass(getattr(gf, k, type(None)), DensityEngine)}


def test_every_exported_engine_sits_on_one_base():
    engines = [getattr(gf, name) for name in gf.__all__
               if isinstance(getattr(gf, name), type) and issubclass(getattr(gf, name), Engine)]
    assert {e.__name__ for e in engines} == set(PARTICLE) | set(DENSITY)
    for e in engines:
        assert issubclass(e, ParticleEngine) != issubclass(e, DensityEngine), e
    assert set(DENSITY) == {"IsoGaussianMixtureVI", "FBGVI", "MixFlow"}


@pytest.mark.parametrize("name", list(PARTICLE) + list(DENSITY))
def test_run_writes_nothing_onto_the_engine_and_starts_at_init_state(name):
    # what a step needs lives in the state or comes from the model: the engine object is the
    # same before and after a run, apart from its compile cache
    engine, _ = {**PARTICLE, **DENSITY}[name]()
    before = {k: v for k, v in vars(engine).items() if k != "_compiled"}
    key = jax.random.key(1)
    a = engine.run(key, 3, progress_bar=False)
    after = {k: v for k, v in vars(engine).items() if k != "_compiled"}
    assert before.keys() == after.keys(), set(after) ^ set(before)
    assert all(after[k] is before[k] for k in before)
    assert engine._compiled   # the compiled loop is cached
    # init_state is the state run starts from: continuing from it gives the same run
    start = engine.init_state(key, num_steps=3)
    b = engine.run(key, 3, progress_bar=False, init_state=start)
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    if name in DENSITY:   # the result declares its density
        draws = a.get_samples(7, jax.random.key(2))
        assert draws["x"].shape == (7, 2)
        assert np.all(np.isfinite(np.asarray(a.log_q(a.unconstrained[:4]))))
        assert a.guide is not None and a.params is not None
        assert (a.flow is not None) == (name == "MixFlow")
        assert ("elbo" in (a.stats or {})) == (name == "MixFlow")
        # engines with a step size in their state count the driver's step halvings
        assert ("backtracks" in (a.stats or {})) == (name in ("FBGVI", "IsoGaussianMixtureVI"))


@pytest.mark.parametrize("name", list(DENSITY))
def test_density_engines_refuse_mcmc(name):
    engine, _ = DENSITY[name]()
    with pytest.raises(TypeError, match=f"{name} fits a density.*run"):
        MCMC(engine, num_warmup=5, num_samples=5, num_chains=2, chain_method="vectorized",
             progress_bar=False)


def test_particle_results_have_no_density():
    res = gf.SVGD(gaussian2, num_particles=8).run(jax.random.key(0), 3, progress_bar=False)
    assert res.flow is None and res.stats is None and res.guide is None
    with pytest.raises(ValueError, match="no density"):
        res.log_q(res.unconstrained)


def test_engines_on_one_model_share_its_bridge_init_and_laplace_programs(linreg_data,
                                                                        monkeypatch):
    # the traced model, its initial-points program and the Laplace mode search do not depend
    # on the engine: a second particle engine on the same model and inputs traces none of
    # them again (on posteriordb's kidiq this took every engine's first run, 100 steps, from
    # 48 to 37 s in one process)
    from numpyro_gflow.engines import base

    traced = {"laplace": 0, "bridge": 0}
    laplace, from_model = base.best_laplace, gf.ModelBridge.from_model

    def count_laplace(*a, **kw):
        traced["laplace"] += 1
        return laplace(*a, **kw)

    def count_bridge(*a, **kw):
        traced["bridge"] += 1
        return from_model(*a, **kw)

    monkeypatch.setattr(base, "best_laplace", count_laplace)
    monkeypatch.setattr(gf.ModelBridge, "from_model", count_bridge)
    X, y = linreg_data
    model = lambda X, y: linreg_model(X, y)   # noqa: E731  (a model no other test has run)
    gf.SVGD(model, num_particles=8).run(jax.random.key(0), 3, X, y, progress_bar=False)
    assert traced == {"laplace": 1, "bridge": 1}, traced
    for engine in (gf.CoinSVGD, gf.KSDD):
        engine(model, num_particles=8).run(jax.random.key(0), 3, X, y, progress_bar=False)
    assert traced == {"laplace": 1, "bridge": 1}, traced
    # the mirrored engines move in their own coordinates: one more Laplace, shared by them
    for engine in (gf.MSVGD, gf.CoinMSVGD):
        engine(model, num_particles=8).run(jax.random.key(0), 3, X, y, progress_bar=False)
    assert traced == {"laplace": 2, "bridge": 1}, traced
