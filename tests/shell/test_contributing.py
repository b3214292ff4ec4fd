"""The worked example of docs/contributing.md: one core module + one short class is an engine."""

import re
import types
from pathlib import Path

import numpy as np

PAGE = Path(__file__).resolve().parents[2] / "docs" / "contributing.md"


def test_worked_example_engine_runs_and_samples_the_posterior():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 3, len(blocks)
    core, engine, usage = blocks
    ula = types.ModuleType("ula")
    exec(compile(core, "core/ula.py", "exec"), ula.__dict__)
    assert "numpyro" not in core        # the core imports no NumPyro
    namespace = {"ula": ula}
    exec(compile(engine, "engines/ula.py", "exec"), namespace)
    cls = namespace["LangevinParticles"]
    body = engine[engine.index("class LangevinParticles"):]
    assert len(body.strip().splitlines()) <= 60     # "one class of <= ~60 lines"
    exec(compile(usage, "usage", "exec"), namespace)
    x = np.asarray(namespace["x"])
    # ULA on N(1, 0.5^2) with h = 0.01: stationary N(1, 0.25 / (1 - h / (2 * 0.25))), sd
    # 0.5051; 500 particles after 2000 steps (mixing time ~ s^2 / h = 25 steps): the mean's
    # Monte Carlo error is 0.5 / sqrt(500) = 0.022, the sd's ~0.016
    assert abs(x.mean() - 1.0) < 4 * 0.023
    assert abs(x.std() - 0.5051) < 0.07
    # the engine is a full engine: an MCMC kernel, and its run is deterministic in the key
    import jax

    from numpyro_gflow.engines.base import ParticleEngine

    assert issubclass(cls, ParticleEngine)
    again = cls(namespace["model"], num_particles=500, step_size=0.01).run(
        jax.random.key(0), 2000, progress_bar=False)
    np.testing.assert_array_equal(np.asarray(again.get_samples()["x"]), x)
