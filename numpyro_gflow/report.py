"""A readable summary of a result, as NumPyro's ``print_summary`` gives for MCMC.

``gf.summary(result)`` returns a `ResultSummary`: per scalar parameter the mean, sd, median
and the central ``prob`` interval's quantiles (5 % and 95 % by default), how many points they come
from (for particle engines, how many of the particles are distinct), and the result's own
checks (`InferenceResult.diagnose`). ``print(gf.summary(result))`` or
``gf.print_summary(result)`` shows it as a table; ``ResultSummary.stats`` holds the numbers (site ->
statistic -> array of the site's shape), as ``numpyro.diagnostics.summary`` does. (For a
comparison against reference draws see `numpyro_gflow.diagnostics.summarize`.)

MCMC's ``n_eff`` and ``r_hat`` are not shown: the points of a gradient-flow result are not a
Markov chain (particles interact; a density engine's draws are independent), so their
autocorrelation means nothing. What tells whether to trust the numbers is the verdict below
the table.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from numpyro_gflow.diagnostics import flatten_samples

__all__ = [
    "ResultSummary",
    "print_summary",
    "summary",
]


@dataclasses.dataclass
class ResultSummary:
    """What `summary` returns.

    Attributes:
        engine: the engine's name.
        stats: site -> {"mean", "std", "median", "<q_lo>%", "<q_hi>%"} -> array (the site's
            shape).
        num_points: how many points the statistics come from.
        distinct: how many of them are distinct (particles that coincide count once).
        kind: ``"particles"`` or ``"draws"`` (a fitted density's draws).
        diagnostics: the result's `diagnose` report (``None`` if not checked).
        status: the run's status (``"ok"`` or why it ended early).
    """

    engine: str
    stats: dict
    num_points: int
    distinct: int
    kind: str
    diagnostics: dict | None
    status: str

    def rows(self):
        """``(name, {statistic: float})`` per scalar parameter, NumPyro's naming
        (``theta[0,1]``)."""
        if not self.stats:
            return
        columns = list(next(iter(self.stats.values())))
        # one (1, k) row per statistic, its k scalars named as flatten_samples names them
        flat = {c: flatten_samples({site: np.asarray(st[c])[None] for site, st in
                                    self.stats.items()}) for c in columns}
        names = flat[columns[0]][1]
        for j, name in enumerate(names):
            yield name, {c: float(flat[c][0][0, j]) for c in columns}

    def __str__(self) -> str:
        rows = list(self.rows())
        if not rows:
            return f"{self.engine}: no sites to summarise"
        columns = list(rows[0][1])
        width = max(max(len(r[0]) for r in rows), 10)
        lines = ["", (" " * width) + "".join(f" {c:>9}" for c in columns)]
        for label, vals in rows:
            lines.append(f"{label:>{width}}" + "".join(f" {_fmt(vals[c]):>9}" for c in columns))
        lines.append("")
        pts = (f"{self.num_points} particles, {self.distinct} distinct"
               if self.kind == "particles" else f"{self.num_points} draws of the fitted density")
        lines.append(f"{self.engine}: {pts}; run {self.status}")
        lines += _verdict_lines(self.diagnostics)
        return "\n".join(lines)

    __repr__ = __str__


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return str(v)
    a = abs(v)
    if a != 0 and (a >= 1e5 or a < 1e-2):
        return f"{v:.2e}"
    return f"{v:.2f}"


def _verdict_lines(report) -> list[str]:
    if report is None:
        return ["checks: not run (result.diagnose() runs them)"]
    values = report["values"]
    shown = ", ".join(_fmt_check(k, v) for k, v in values.items())
    if report["ok"]:
        lines = [f"checks: ok ({shown})"]
    else:
        lines = [f"checks: FAILED {', '.join(report['failed'])} ({shown})"]
        lines += [f"  - {m}" for m in report["messages"].values()]
    if report.get("skipped"):
        lines.append("  not checked: " + "; ".join(f"{k} ({why})"
                                                   for k, why in report["skipped"].items()))
    return lines


def _fmt_check(name, v) -> str:
    if isinstance(v, bool):
        return f"{name} {'yes' if v else 'no'}"
    if name == "ksd_test":
        return f"ksd_test p = {float(v):.3g}"
    if name == "modes":
        return f"modes uncovered {v}"
    if isinstance(v, int):
        return f"{name} {v}"
    return f"{name} {float(v):.3g}"


def summary(result, prob: float = 0.9, num_samples: int | None = None, rng_key=None,
            diagnose: bool = False) -> ResultSummary:
    """Per-parameter mean, sd, median and central ``prob`` interval of ``result``'s points,
    with its checks.

    Args:
        result: an `InferenceResult`, or a NumPyro ``MCMC`` that ran one of our particle
            engines as its kernel: its ensemble after the last step is then summarised as one
            sample and checked (MCMC's own r_hat and n_eff treat each interacting particle as a
            chain and do not apply; `EnsembleKernel.ensemble_result`).
        prob: mass of the central interval (0.9: the 5 % and 95 % quantiles).
        num_samples: summarise this many fresh draws of a density engine's fit instead of
            the result's own points (with ``rng_key``).
        rng_key: the key of those draws.
        diagnose: run ``result.diagnose()`` if the result has not been checked yet (``run``
            checks it unless told ``diagnose=False``).
    """
    if not isinstance(prob, float) or not 0.0 < prob < 1.0:
        raise ValueError(f"prob must be a float in (0, 1), got {prob!r}")
    from numpyro_gflow.engines.mcmc import EnsembleKernel

    if isinstance(getattr(result, "sampler", None), EnsembleKernel):
        result, diagnose = result.sampler.ensemble_result(result), True
    samples = result.get_samples(num_samples, rng_key)
    lo, hi = (1.0 - prob) / 2.0, (1.0 + prob) / 2.0
    names = ("mean", "std", "median", f"{100 * lo:.1f}%", f"{100 * hi:.1f}%")
    stats = {}
    for site, x in samples.items():
        x = np.asarray(x, dtype=np.float64)
        q = np.quantile(x, [0.5, lo, hi], axis=0)
        stats[site] = dict(zip(names, (x.mean(0), x.std(0, ddof=1) if x.shape[0] > 1
                                       else np.full(x.shape[1:], np.nan), q[0], q[1], q[2])))
    kind = "draws" if result.sampler_available() else "particles"
    if num_samples is None:
        z = np.asarray(result.unconstrained)
        n = z.shape[0]
        distinct = int(np.unique(z, axis=0).shape[0])
    else:
        n = distinct = int(num_samples)
    if diagnose and result.diagnostics is None:
        result.diagnose()
    return ResultSummary(result.engine, stats, n, distinct, kind, result.diagnostics, result.status)


def print_summary(result, prob: float = 0.9, **kwargs) -> None:
    """Print `summary` (``result``'s per-parameter table and its checks)."""
    print(summary(result, prob, **kwargs))
