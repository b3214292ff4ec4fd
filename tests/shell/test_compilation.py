"""`compilation.brief_jit` and `compilation.Background` (issue 19: the first call's compile
time), and MixFlow's use of them: a program compiled in the background is not compiled again
by the call that needs it."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import numpyro_gflow as gf
from numpyro_gflow.compilation import BRIEF, SHORT, Background, brief_jit

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class _Compiles:
    """XLA compilations (by program name) while the listener is registered."""

    def __init__(self):
        self.names = []
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            self.names.append(kwargs.get("fun_name", ""))

    def count(self, fragment):
        return sum(fragment in n for n in self.names)


COMPILES = _Compiles()


def test_brief_jit_gives_jit_values_and_nests_inside_another_program():
    def f(x, n):
        return jnp.sin(x) * n + jnp.cumsum(x)

    x = jnp.linspace(-2.0, 2.0, 7)
    brief = brief_jit(f, static_argnums=1)
    short = brief_jit(level=SHORT, static_argnames="n")(f)
    np.testing.assert_allclose(brief(x, 3), jax.jit(f, static_argnums=1)(x, 3), rtol=1e-6)
    np.testing.assert_allclose(short(x, n=3), f(x, 3), rtol=1e-6)
    # inside another program JAX takes no compiler options: a plain nested jit
    outer = jax.jit(lambda x: brief(x, 2) + 1.0)
    np.testing.assert_allclose(outer(x), f(x, 2) + 1.0, rtol=1e-6)
    assert brief.__name__ == "f" and BRIEF == 0
    # the jitted function's own attributes (lower, ...) are there
    assert brief.lower(x, 3).compile() is not None


def test_background_compilation_is_what_the_later_call_runs():
    def g(x):
        for _ in range(5):
            x = jnp.tanh(x @ x.T) + x
        return x

    g.__name__ = g.__qualname__ = "background_probe_g"
    f = jax.jit(g)
    x = jnp.ones((6, 6)) * 0.1
    low = f.lower(x)
    background = Background([low])
    background.wait()
    compiled = COMPILES.count("background_probe_g")
    assert compiled == 1          # the thread compiled it
    f(x)
    assert COMPILES.count("background_probe_g") == compiled   # and the call did not again


@pytest.mark.parametrize("reference, rule", [("fullrank", "acceptance"),
                                             ("meanfield", "acceptance"),
                                             ("fullrank", "elbo")])
def test_mixflow_compiles_its_grid_and_sampler_once(reference, rule):
    # the step-size grid's and the sampler's programs are lowered before the reference fit and
    # compiled in a background thread; run + get_samples(num_draws) must then use them (the
    # grid's program takes the fitted reference's state, whose fields differ between a
    # full-rank and a mean-field reference)
    def model(y):
        m = numpyro.sample("m", dist.Normal(0.0, 3.0))
        s = numpyro.sample("s", dist.HalfNormal(2.0))
        with numpyro.plate("n", y.shape[0]):
            numpyro.sample("y", dist.Normal(m, s), obs=y)

    y = np.linspace(-1.0, 2.0, 17).astype(np.float32)   # a shape no other test uses
    engine = gf.MixFlow(model, flow_length=8, num_leapfrog=3, num_draws=300, reference=reference,
                        step_size_rule=rule)
    grid = f"_jit_tune_{rule}"
    before = (COMPILES.count(grid), COMPILES.count("_jit_sample"))
    result = engine.run(jax.random.key(0), 20, y, progress_bar=False, diagnose=False)
    draws = result.get_samples(300, jax.random.key(1))
    assert draws["m"].shape == (300,) and np.all(np.isfinite(draws["m"]))
    after = (COMPILES.count(grid), COMPILES.count("_jit_sample"))
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
