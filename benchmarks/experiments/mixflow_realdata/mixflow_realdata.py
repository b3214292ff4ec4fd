"""MixFlow on a real-data regression against NumPyro's normalizing-flow guides at equal wall time.

    nice .venv/bin/python -m benchmarks.experiments.mixflow_realdata.mixflow_realdata

writes ``MIXFLOW_REALDATA.md`` next to this script.

Issue 8: "On a real-data regression: posterior means within 0.1 NUTS-sd and an ELBO at least that
of NumPyro's AutoIAFNormal or AutoBNAFNormal fitted for equal wall time."

Data: diabetes (``numpyro_gflow.datasets.load_diabetes()``, 442 x 10), X and y standardised; model
w ~ N(0, 1)^10, b ~ N(0, 1), sigma ~ HalfNormal(1), y ~ N(X w + b, sigma) (d = 12), as in
tests/engines/test_mixflow.py. Reference: NUTS, 2 chains x (1000 + 3000).

MixFlow references: ``"meanfield"`` (the paper's) and ``"fullrank"`` (Laplace approximation,
refined by full-rank Gaussian VI in its whitened coordinates; the leapfrog runs there too).
Each MixFlow configuration is timed over its whole first call (reference fit, step-size
tuning, final draws and ELBO; compilation included). Each flow guide then gets SVI
(``Trace_ELBO``, Adam 1e-3, NumPyro's defaults otherwise) for that same wall time, compilation
included: SVI runs in compiled chunks of 500 steps (one compilation), each continuing the
last, until that time is spent (so it may overrun by up to one chunk). ELBOs: MixFlow's is on the
augmented space (x, rho, u), a lower bound on the ELBO of its x-marginal; the guides' from
10,000 draws. The guides: AutoIAFNormal, AutoBNAFNormal (the issue's yardstick) and
AutoMultivariateNormal (the full-rank Gaussian family, for the reading). Mean error: max over
the 12 parameters of |mean - NUTS mean| / NUTS sd (2000 draws).
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoBNAFNormal, AutoIAFNormal, AutoMultivariateNormal

import numpyro_gflow as gf
from numpyro_gflow.datasets import load_diabetes
from numpyro_gflow.datasets.models import diabetes_log_evidence, diabetes_regression

HERE = Path(__file__).resolve().parent
CONFIGS = (
    dict(flow_length=300, num_leapfrog=20, step_size_rule="elbo", reference="meanfield"),
    dict(flow_length=100, num_leapfrog=20, step_size_rule="elbo", reference="fullrank"),
    dict(flow_length=300, num_leapfrog=20, step_size_rule="elbo", reference="fullrank"),
    dict(flow_length=1000, num_leapfrog=20, reference="meanfield"),
)
GUIDES = (AutoIAFNormal, AutoBNAFNormal, AutoMultivariateNormal)


def load():
    """The diabetes data, X and y standardised, float32."""
    X, y = load_diabetes()
    return jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)


model = diabetes_regression          # numpyro_gflow.datasets.models
log_evidence = diabetes_log_evidence


def flat(s):
    return np.column_stack([np.asarray(s["w"]), np.asarray(s["b"])[:, None],
                            np.asarray(s["sigma"])[:, None]])


def guide_fit(guide_cls, seconds, X, y):
    guide = guide_cls(model)
    svi = SVI(model, guide, optax.adam(1e-3), Trace_ELBO())
    # SVI in compiled chunks of 500 steps (one compilation, counted), continuing each other,
    # until that wall time is spent (so it may overrun by up to one chunk)
    t0, steps = time.perf_counter(), 0
    state = svi.init(jax.random.key(0), X, y)
    chunk = jax.jit(lambda st: jax.lax.scan(lambda s, _: (svi.update(s, X, y)[0], None), st, None,
                                            length=500)[0])
    while time.perf_counter() - t0 < seconds:
        state = jax.block_until_ready(chunk(state))
        steps += 500
    params = svi.get_params(state)
    wall = time.perf_counter() - t0
    per = jax.vmap(lambda k: -Trace_ELBO().loss(k, params, model, guide, X, y))(
        jax.random.split(jax.random.key(4), 10_000))
    draws = Predictive(model, guide=guide, params=params, num_samples=2000,
                       return_sites=["w", "b", "sigma"])(jax.random.key(5), X)
    return steps, wall, float(per.mean()), float(per.std() / 100), draws


def main():
    t_all = time.perf_counter()
    X, y = load()
    mcmc = MCMC(NUTS(model), num_warmup=1000, num_samples=3000, num_chains=2,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(0), X, y)
    ref = flat(mcmc.get_samples())
    mu, sd = ref.mean(0), ref.std(0)
    err = lambda s: float(np.max(np.abs(flat(s).mean(0) - mu) / sd))  # noqa: E731

    log_z = log_evidence(X, y)
    rows = []
    for cfg in CONFIGS:
        t0 = time.perf_counter()
        res = gf.MixFlow(model, num_draws=2000, **cfg).run(jax.random.key(1), 3000, X, y,
                                                           progress_bar=False)
        wall = time.perf_counter() - t0
        s = res.stats
        desc = ", ".join(f"{k}={v}" for k, v in cfg.items())
        rows.append((f"MixFlow ({desc}; step {s['step_size']:.3g})", f"{wall:.1f}", "-",
                     f"{s['elbo']:.3f} +- {s['elbo_se']:.3f}", f"{log_z - s['elbo']:.3f}",
                     f"{err(res.get_samples()):.3f}"))
        print(rows[-1], flush=True)
        rows.append((f"  its reference ({cfg.get('reference', 'meanfield')}) alone", "", "",
                     f"{s['reference_elbo']:.3f} +- {s['reference_elbo_se']:.3f}",
                     f"{log_z - s['reference_elbo']:.3f}", ""))
        for guide_cls in GUIDES:
            steps, gwall, m, se, draws = guide_fit(guide_cls, wall, X, y)
            rows.append((f"  {guide_cls.__name__}, same wall time", f"{gwall:.1f}", f"{steps}",
                         f"{m:.3f} +- {se:.3f}", f"{log_z - m:.3f}", f"{err(draws):.3f}"))
            print(rows[-1], flush=True)

    lines = [
        "# MixFlow vs NumPyro flow guides at equal wall time (issue 8)", "",
        f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by "
        "`python -m benchmarks.experiments.mixflow_realdata.mixflow_realdata` "
        f"in {(time.perf_counter() - t_all) / 60:.1f} min ({platform.machine()}, "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end; "
        f"JAX {jax.__version__}, NumPyro "
        f"{numpyro.__version__}, float32). Setting: see the script's docstring. Exact log evidence "
        f"(quadrature over sigma, float64): {log_z:.3f}; KL = log Z - ELBO.", "",
        "| fit | wall s | SVI steps | ELBO | KL | max mean err (NUTS sd) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ] + [f"| {' | '.join(r)} |" for r in rows] + [""]
    (HERE / "MIXFLOW_REALDATA.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
