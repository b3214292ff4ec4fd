"""How close is a sample to the posterior? Kernel Stein discrepancy, energy distance, MMD, ELBO.

* `ksd` needs only the model's score: no reference sample. IMQ base kernel with
  ``c = 1, beta = -1/2`` (Gorham & Mackey 2017), V-statistic, in NumPyro's unconstrained space.
  It detects non-convergence (too narrow, shifted, stuck) but its scale depends on the model,
  so compare KSDs on the same model only.
* `energy_distance` / `mmd` compare two samples (an engine against NUTS, say),
  each coordinate standardised by the reference sample's sd.
* `elbo` for engines that fit a density.
* `summarize` puts the numbers a reader needs in one table, with the energy distance that
  the same number of exact reference draws gets, so "good" has a yardstick.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from numpyro_gflow.core.kernels import Kernel, RBFKernel, pairwise_sq_dists, stein_discrepancy

__all__ = [
    "ksd",
    "model_ksd",
    "energy_distance",
    "mmd",
    "elbo",
    "flatten_samples",
    "summarize",
    "Summary",
]


def _row_blocks(n: int, block_size: int):
    num = -(-n // block_size)
    return num, num * block_size - n


#: the kernel Stein discrepancy (`numpyro_gflow.core.kernels.stein_discrepancy`)
ksd = stein_discrepancy


def model_ksd(result, kernel: Kernel | None = None) -> float:
    """KSD of an engine's points against its model (unconstrained space, full-data score)."""
    bridge, z = result.bridge, result.unconstrained
    score = bridge.batch_score(z, result.model_args, result.model_kwargs)
    return float(ksd(z, score, kernel))


def _standardise(x: jax.Array, y: jax.Array, scale_by: str | None):
    if scale_by is None:
        return x, y
    ref = {"y": y, "x": x, "pooled": jnp.concatenate([x, y])}[scale_by]
    sd = jnp.std(ref, axis=0)
    sd = jnp.where(sd > 0, sd, 1.0)
    mu = jnp.mean(ref, axis=0)
    return (x - mu) / sd, (y - mu) / sd


def _mean_pairwise_dist(a, b, block_size=2048):
    # mean |a_i - b_j| without the full n x m matrix when it is large
    def block(ai):
        return jnp.sum(jnp.sqrt(pairwise_sq_dists(ai, b)))
    n = a.shape[0]
    num_blocks, pad = _row_blocks(n, block_size)
    if num_blocks == 1:
        return block(a) / (n * b.shape[0])
    ab = jnp.pad(a, ((0, pad), (0, 0))).reshape(num_blocks, block_size, -1)
    valid = (jnp.arange(num_blocks * block_size) < n).reshape(num_blocks, block_size)
    sums = lax.map(lambda args: jnp.sum(jnp.where(args[1][:, None],
                                                  jnp.sqrt(pairwise_sq_dists(args[0], b)), 0.0)),
                   (ab, valid))
    return jnp.sum(sums) / (n * b.shape[0])


def energy_distance(x, y, scale_by: str | None = "pooled") -> float:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistics) between samples.

    ``x`` (n, d) and ``y`` (m, d), or dicts of site arrays (flattened with
    `flatten_samples`). Each coordinate is standardised first (by the pooled sample's sd
    by default, which keeps the distance symmetric; ``scale_by="y"`` uses the second sample,
    the reference; ``None`` leaves the coordinates as they are, as the mirrored-Stein paper
    does on the simplex). Zero for identical samples, symmetric, >= 0.
    """
    return float(_energy_distance(_as_matrix(x), _as_matrix(y), scale_by))


@functools.partial(jax.jit, static_argnums=2)
def _energy_distance(x, y, scale_by):
    # compiled: run op by op, each new pair of shapes compiled a dozen small programs
    x, y = _standardise(x, y, scale_by)
    xy = _mean_pairwise_dist(x, y)
    xx = _mean_pairwise_dist(x, x)
    yy = _mean_pairwise_dist(y, y)
    return jnp.maximum(2 * xy - xx - yy, 0.0)


def mmd(x, y, kernel: Kernel | None = None, scale_by: str = "pooled") -> float:
    """Maximum mean discrepancy (V-statistic, biased) with an RBF kernel, median bandwidth on the
    pooled, standardised sample."""
    x, y = _standardise(_as_matrix(x), _as_matrix(y), scale_by)
    kernel = RBFKernel() if kernel is None else kernel
    z = jnp.concatenate([x, y])
    sq = pairwise_sq_dists(z)
    h = kernel.scale(sq)
    K = kernel.profile(sq / h)[0]
    n = x.shape[0]
    val = K[:n, :n].mean() + K[n:, n:].mean() - 2 * K[:n, n:].mean()
    return float(jnp.sqrt(jnp.maximum(val, 0.0)))


def elbo(log_density: Callable, sample: Callable, log_q: Callable, rng_key,
         num_samples: int = 1000) -> jax.Array:
    """Monte Carlo ELBO ``E_q[log p(z) - log q(z)]`` with ``num_samples`` draws of ``q``.

    ``sample(rng_key, n) -> z (n, d)``, ``log_density(z) -> (n,)`` (the unnormalised log
    posterior), ``log_q(z) -> (n,)``. Returns ``(estimate, standard_error)``.
    """
    z = sample(rng_key, num_samples)
    w = log_density(z) - log_q(z)
    return jnp.mean(w), jnp.std(w) / jnp.sqrt(num_samples)


# ---------------------------------------------------------------------- tables

def flatten_samples(samples: dict, sites=None) -> tuple[np.ndarray, list[str]]:
    """Site dict (leading sample dim) -> (n, k) matrix and ``site[i,j]`` column names."""
    sites = sorted(samples) if sites is None else sites
    cols, names = [], []
    for site in sites:
        v = np.asarray(samples[site])
        n = v.shape[0]
        flat = v.reshape(n, -1)
        cols.append(flat)
        if v.ndim == 1:
            names.append(site)
        else:
            for idx in np.ndindex(*v.shape[1:]):
                names.append(f"{site}[{','.join(map(str, idx))}]")
    return np.concatenate(cols, axis=1), names


def _as_matrix(x):
    if isinstance(x, dict):
        return jnp.asarray(flatten_samples(x)[0])
    x = jnp.asarray(x)
    return x[:, None] if x.ndim == 1 else x


@dataclasses.dataclass
class Summary:
    """Per-parameter moments and, against a reference, the errors and energy distances."""

    table: "object"                    # pandas.DataFrame, one row per scalar parameter
    energy_distance: float | None = None
    energy_baseline: float | None = None
    ksd: float | None = None

    def to_markdown(self, digits: int = 3) -> str:
        df = self.table
        lines = ["| parameter | " + " | ".join(df.columns) + " |",
                 "|---|" + "---|" * len(df.columns)]
        for name, row in df.iterrows():
            lines.append(f"| {name} | " + " | ".join(f"{v:.{digits}g}" for v in row.values) + " |")
        extra = []
        if self.energy_distance is not None:
            extra.append(f"energy distance to reference: {self.energy_distance:.4g} "
                         f"(exact draws of the same size: {self.energy_baseline:.4g})")
        if self.ksd is not None:
            extra.append(f"KSD (IMQ, unconstrained space): {self.ksd:.4g}")
        return "\n".join(lines + ([""] + extra if extra else []))

    def __str__(self):
        return self.to_markdown()


def summarize(result, reference: dict | None = None, rng_key=None,
              include_ksd: bool = True) -> Summary:
    """A small table describing ``result`` (an InferenceResult, or a dict of samples).

    Columns: ``mean``, ``sd`` per scalar parameter (latent sites only; deterministic sites are
    left out). With ``reference`` (a dict of constrained reference draws, e.g. a long NUTS run):
    ``mean_err`` (|mean - ref mean| in reference sds), ``sd_err`` (sd / ref sd - 1), and, over
    all latent parameters jointly, the energy distance to the reference and the energy distance
    that ``n`` exact draws from the reference get against the rest of it (``energy_baseline``,
    with ``n`` the size of ``result``'s sample), the yardstick for "good".
    """
    import pandas as pd

    if isinstance(result, dict):
        samples, sites, ksd_value = result, sorted(result), None
    else:
        sites = list(result.bridge.site_names)
        samples = result.get_samples()
        ksd_value = model_ksd(result) if include_ksd else None
    if reference is not None:
        sites = [s for s in sites if s in reference]
    x, names = flatten_samples(samples, sites)
    table = pd.DataFrame({"mean": x.mean(0), "sd": x.std(0)}, index=names)
    energy = baseline = None
    if reference is not None:
        r, _ = flatten_samples(reference, sites)
        ref_mean, ref_sd = r.mean(0), r.std(0)
        table["ref_mean"] = ref_mean
        table["ref_sd"] = ref_sd
        table["mean_err"] = np.abs(x.mean(0) - ref_mean) / ref_sd
        table["sd_err"] = x.std(0) / ref_sd - 1.0
        energy = energy_distance(x, r, scale_by="y")
        baseline = energy_baseline(r, x.shape[0], rng_key)
    return Summary(table, energy, baseline, ksd_value)


def energy_baseline(reference, n: int, rng_key=None) -> float:
    """Energy distance of ``n`` reference draws (taken at random) against the remaining ones."""
    r = _as_matrix(reference)
    rng_key = jax.random.key(0) if rng_key is None else rng_key
    m = r.shape[0]
    if m < 2 * n:
        n = m // 2
    perm = jax.random.permutation(rng_key, m)
    return energy_distance(r[perm[:n]], r[perm[n:]], scale_by="y")
