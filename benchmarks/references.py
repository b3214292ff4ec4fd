"""Make the reference posterior samples of the benchmark models, once.

    python -m benchmarks.references [--models a,b] [--force]

For each model in :mod:`benchmarks.models` writes ``benchmarks/references/<name>.npz``: one
float32 array per compared latent site (leading dim = draws) and ``__info__``, a JSON string
saying how the draws were made (method, seed, sizes; for NUTS the settings and the R-hat,
effective sample size and divergence count). Exact samplers draw ``EXACT_DRAWS`` independent
samples with a fixed seed; models without one get a long NUTS run (several chains, run one
after the other, after warmup). Existing files are kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import jax
import numpy as np
import numpyro
from numpyro.diagnostics import summary as mcmc_summary
from numpyro.infer import MCMC, NUTS

from benchmarks.models import MODEL_NAMES, REFERENCE_DIR, get_model

EXACT_DRAWS = 20_000
EXACT_SEED = 20240601


def nuts_reference(bm, num_warmup: int, num_samples: int, num_chains: int, seed: int = 0,
                   target_accept_prob: float = 0.8, max_tree_depth: int = 10):
    kernel = NUTS(bm.model, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(seed), *bm.args, extra_fields=("diverging", "num_steps"), **bm.kwargs)
    grouped = mcmc.get_samples(group_by_chain=True)
    stats = mcmc_summary({k: np.asarray(grouped[k]) for k in bm.sites}, group_by_chain=True)
    r_hat = max(float(np.max(s["r_hat"])) for s in stats.values())
    n_eff = min(float(np.min(s["n_eff"])) for s in stats.values())
    extra = mcmc.get_extra_fields()
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples().items() if k in bm.sites}
    info = dict(method="nuts", num_warmup=num_warmup, num_samples_per_chain=num_samples,
                num_chains=num_chains, chain_method="sequential", seed=seed,
                target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
                max_r_hat=r_hat, min_ess=n_eff,
                divergences=int(np.sum(extra["diverging"])),
                mean_num_steps=float(np.mean(extra["num_steps"])))
    return samples, info


def exact_reference(bm, num_draws: int = EXACT_DRAWS, seed: int = EXACT_SEED):
    samples = bm.exact(jax.random.key(seed), num_draws)
    samples = {k: np.asarray(samples[k]) for k in bm.sites}
    return samples, dict(method="exact", seed=seed, num_draws=num_draws)


def make_reference(name: str) -> dict:
    bm = get_model(name)
    t0 = time.perf_counter()
    if bm.exact is not None:
        samples, info = exact_reference(bm)
    else:
        samples, info = nuts_reference(bm, **bm.reference_nuts)
    info.update(model=name, description=bm.description, sites=list(bm.sites),
                seconds=round(time.perf_counter() - t0, 2),
                created=datetime.date.today().isoformat(),
                numpyro=numpyro.__version__, jax=jax.__version__)
    REFERENCE_DIR.mkdir(exist_ok=True)
    arrays = {k: np.asarray(v, np.float32) for k, v in samples.items()}
    np.savez_compressed(bm.reference_path(), __info__=np.asarray(json.dumps(info)), **arrays)
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--force", action="store_true", help="remake existing files")
    opts = parser.parse_args(argv)
    for name in [m for m in opts.models.split(",") if m]:
        path = get_model(name).reference_path()
        if path.exists() and not opts.force:
            print(f"{name}: {path.relative_to(REFERENCE_DIR.parent.parent)} exists "
                  "(--force to remake)")
            continue
        info = make_reference(name)
        size_kb = path.stat().st_size / 1024
        extra = ""
        if info["method"] == "nuts":
            extra = (f"; max R-hat {info['max_r_hat']:.3f}, min ESS {info['min_ess']:.0f}, "
                     f"{info['divergences']} divergences")
        print(f"{name}: {info['method']} reference, {info['seconds']:.1f} s, "
              f"{size_kb:.0f} KB{extra}")


if __name__ == "__main__":
    main()
