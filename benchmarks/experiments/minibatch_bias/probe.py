"""Probe: mini-batch bias on a hierarchical regression (issue 20). Not part of the suite."""
import sys, time
import numpy as np
import jax, jax.numpy as jnp
import numpyro, numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
import optax
import numpyro_gflow as gf

N, J, BATCH = 500, 10, 50
rng = np.random.default_rng(0)
g = rng.integers(0, J, N)
x = rng.normal(size=N)
alpha_true = 1.0 + 0.7 * rng.normal(size=J)
y = alpha_true[g] + 0.5 * x + 0.8 * rng.normal(size=N)
g, x, y = jnp.asarray(g), jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def model(g, x, y, batch=None):
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfNormal(2))
    beta = numpyro.sample("beta", dist.Normal(0, 2))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2))
    with numpyro.plate("groups", J):
        alpha = numpyro.sample("alpha", dist.Normal(mu, tau))
    with numpyro.plate("data", N, subsample_size=batch) as idx:
        numpyro.sample("y", dist.Normal(alpha[g[idx]] + beta * x[idx], sigma), obs=y[idx])


mcmc = MCMC(NUTS(model), num_warmup=1000, num_samples=4000, progress_bar=False)
mcmc.run(jax.random.key(0), g, x, y)
ref = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}


def err(s):
    worst, wsd = 0.0, 0.0
    rows = {}
    for k, r in ref.items():
        m = np.abs(np.asarray(s[k]).mean(0) - r.mean(0)) / r.std(0)
        sd = np.abs(np.asarray(s[k]).std(0) / r.std(0) - 1)
        rows[k] = (float(np.max(m)), float(np.max(sd)))
        worst, wsd = max(worst, float(np.max(m))), max(wsd, float(np.max(sd)))
    return worst, wsd, rows


def go(name, engine, steps, key=1, batch=BATCH, **kw):
    t = time.perf_counter()
    res = engine.run(jax.random.key(key), steps, g, x, y, batch=batch, progress_bar=False,
                     diagnose=False, **kw)
    try:
        s = res.get_samples(2000, jax.random.key(9))
    except (TypeError, ValueError):
        s = res.get_samples()
    w, sd, rows = err(s)
    worst = max(rows, key=lambda k: rows[k][0])
    print(f"{name:<45} mean {w:6.3f} ({worst})  sd {sd:6.3f}  {time.perf_counter()-t:5.1f}s", flush=True)
    print("    " + "  ".join(f"{k} {m:.2f}/{v:.2f}" for k, (m, v) in rows.items()), flush=True)


which = sys.argv[1:] or ["all"]
if "fb" in which or "all" in which:
    go("FBGVI full data", gf.FBGVI(model), 1000, batch=None)
    go("FBGVI det mb", gf.FBGVI(model), 2000)
    go("FBGVI stochastic mb 2000", gf.FBGVI(model, stochastic=True), 2000)
    go("FBGVI stochastic mb 10000", gf.FBGVI(model, stochastic=True), 10000)
    go("FBGVI stochastic mb 10000 nmc10", gf.FBGVI(model, stochastic=True, num_mc_samples=10), 10000)
if "fbavg" in which:
    for k in range(1, 6):
        go(f"FBGVI stoch avg mb 10000 key {k}", gf.FBGVI(model, stochastic=True), 10000, key=k)
    for k in range(1, 3):
        go(f"FBGVI stoch avg mb 2000 key {k}", gf.FBGVI(model, stochastic=True), 2000, key=k)
        go(f"FBGVI stoch avg full 2000 key {k}", gf.FBGVI(model, stochastic=True), 2000, key=k, batch=None)
if "fbdet" in which:
    go("FBGVI det mb noprecond", gf.FBGVI(model, precondition=None), 2000)
    go("FBGVI det mb 10000", gf.FBGVI(model), 10000)
    go("FBGVI det mb key2", gf.FBGVI(model), 2000, key=2)
if "fbkeys" in which:
    for k in range(1, 6):
        go(f"FBGVI stochastic mb 10000 key {k}", gf.FBGVI(model, stochastic=True), 10000, key=k)
    for k in range(1, 3):
        go(f"FBGVI stochastic full 10000 key {k}", gf.FBGVI(model, stochastic=True), 10000, key=k, batch=None)
        go(f"FBGVI stochastic mb 20000 key {k}", gf.FBGVI(model, stochastic=True), 20000, key=k)
if "svgd3" in which:
    for n in (500,):
        go(f"SVGD full {n}p 4000", gf.SVGD(model, num_particles=n), 4000, batch=None)
        go(f"SVGD mb {n}p decay 4000", gf.SVGD(model, num_particles=n, optimizer=optax.sgd(optax.polynomial_schedule(0.05, 0.001, 1, 4000))), 4000)
if "svgd2" in which:
    for n in (100, 300):
        go(f"SVGD full {n}p 4000", gf.SVGD(model, num_particles=n), 4000, batch=None)
        go(f"SVGD mb {n}p decay 4000", gf.SVGD(model, num_particles=n, optimizer=optax.sgd(optax.polynomial_schedule(0.05, 0.001, 1, 4000))), 4000)
        go(f"SVGD mb {n}p adagrad-decay 4000", gf.SVGD(model, num_particles=n, optimizer=optax.chain(optax.scale_by_rms(decay=0.9), optax.scale_by_schedule(optax.polynomial_schedule(0.1, 0.002, 1, 4000)), optax.scale(-1.0))), 4000)
if "svgd" in which or "all" in which:
    go("SVGD full data", gf.SVGD(model), 2000, batch=None)
    go("SVGD mb default", gf.SVGD(model), 2000)
    go("SVGD mb 10000", gf.SVGD(model), 10000)
    go("SVGD mb sgd decay", gf.SVGD(model, optimizer=optax.sgd(optax.polynomial_schedule(0.05, 0.001, 1, 4000))), 4000)
    go("CoinSVGD mb", gf.CoinSVGD(model), 2000)
