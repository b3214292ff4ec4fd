"""The driver's step control: a step that turns the state non-finite is retried from the same
state with the step halved (up to `driver.MAX_BACKTRACKS` times), and the smaller step is kept.

A toy engine makes the rule checkable exactly: gradient descent on a standard normal whose step
is poisoned (NaN) whenever its step size exceeds 0.1, so the number of halvings a start needs is
known in advance."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_gflow.engines.base import NonFiniteError, ParticleEngine
from numpyro_gflow.engines.driver import MAX_BACKTRACKS


class State(NamedTuple):
    particles: jax.Array
    step_size: jax.Array
    rng_key: jax.Array


class Info(NamedTuple):
    mean_log_density: jax.Array
    step_size: jax.Array


class PoisonedDescent(ParticleEngine):
    """x += h * score, NaN where h > 0.1 (a step too large for the target)."""

    objective = "mean_log_density"

    def __init__(self, model, step_size, shrinkable=True):
        super().__init__(model, num_particles=4, precondition=None)
        self.step_size, self.shrinkable = step_size, shrinkable

    def _core_init(self, z, rng_key, target):
        return State(z, jnp.asarray(self.step_size, z.dtype), rng_key)

    def _core_step(self, state, target):
        log_p, score = target.score_fn()(state.particles, None)
        x = state.particles + state.step_size * score
        x = jnp.where(state.step_size > 0.1, jnp.nan, x)
        return state._replace(particles=x), Info(jnp.mean(log_p), state.step_size)

    def _shrink_step(self, state, factor):
        return state._replace(step_size=state.step_size * factor) if self.shrinkable else None


def model():
    numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))


def test_a_non_finite_step_is_retried_smaller_and_the_smaller_step_kept():
    # h = 1.0 needs four halvings (0.0625 <= 0.1): at step 1 only, then the run goes on
    res = PoisonedDescent(model, 1.0).run(jax.random.key(0), 30, progress_bar=False)
    assert res.status == "ok"
    assert res.stats["backtracks"] == 4
    np.testing.assert_allclose(np.asarray(res.trace["step_size"]), 0.0625)
    assert float(res.state.step_size) == 0.0625
    # the run descended with the kept step: x_t = (1 - h)^t x_0 for a standard normal
    start = PoisonedDescent(model, 0.0625).run(jax.random.key(0), 30, progress_bar=False)
    np.testing.assert_allclose(np.asarray(res.state.particles),
                               np.asarray(start.state.particles), rtol=1e-6)
    assert start.stats["backtracks"] == 0


def test_backtracking_gives_up_after_max_backtracks():
    # 0.5 ** MAX_BACKTRACKS * h > 0.1: every retry is non-finite, the NaN policy applies
    h = 0.2 * 2.0 ** MAX_BACKTRACKS
    with pytest.raises(NonFiniteError, match="step 1 of 10"):
        PoisonedDescent(model, h).run(jax.random.key(0), 10, progress_bar=False)
    # exactly the limit's halvings (3.2 / 32 = 0.1) is still rescued
    res = PoisonedDescent(model, 0.1 * 2.0 ** MAX_BACKTRACKS).run(jax.random.key(0), 10,
                                                                  progress_bar=False)
    assert res.stats["backtracks"] == MAX_BACKTRACKS


def test_an_engine_without_a_step_in_its_state_is_not_retried():
    with pytest.raises(NonFiniteError, match="step 1 of 10"):
        PoisonedDescent(model, 1.0, shrinkable=False).run(jax.random.key(0), 10,
                                                          progress_bar=False)
    res = PoisonedDescent(model, 0.05, shrinkable=False).run(jax.random.key(0), 10,
                                                             progress_bar=False)
    assert "backtracks" not in (res.stats or {})


class PickyDescent(PoisonedDescent):
    """Finite at any step, but rejects steps longer than 0.1 (as IsoMix rejects a clipped IBW
    factor): the driver halves such a step like a non-finite one."""

    def _core_step(self, state, target):
        log_p, score = target.score_fn()(state.particles, None)
        x = state.particles + state.step_size * score
        return state._replace(particles=x), Info(jnp.mean(log_p), state.step_size)

    def _step_acceptable(self, info):
        return info.step_size <= 0.1


def test_a_rejected_finite_step_is_retried_smaller_and_one_still_rejected_is_kept():
    res = PickyDescent(model, 1.0).run(jax.random.key(0), 30, progress_bar=False)
    assert res.status == "ok" and res.stats["backtracks"] == 4
    assert float(res.state.step_size) == 0.0625
    # past the last halving (6.4 / 32 = 0.2 is still rejected): the finite step is kept, no
    # failure, with the smallest step tried; the next step halves once more (0.1, accepted)
    res = PickyDescent(model, 6.4).run(jax.random.key(0), 3, progress_bar=False)
    assert res.status == "ok"
    np.testing.assert_allclose(np.asarray(res.trace["step_size"]), [0.2, 0.1, 0.1], rtol=1e-6)
    assert res.stats["backtracks"] == MAX_BACKTRACKS + 1
