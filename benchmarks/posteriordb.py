"""Accuracy on real posteriors: every engine with its defaults on the 13 posteriordb posteriors.

    python -m benchmarks.posteriordb [--posteriors a,b] [--engines x,y] [--steps N]
        [--timeout S] [--out DIR] [--render-only]

Each (posterior, engine) fit runs in a fresh Python process (``--one``), as a user's first
call does: construction, ``run`` and the draws, compilation included, limited to ``--timeout``
seconds (a fit that takes longer is a row with the timeout as its error). The posteriors are
`numpyro_gflow.datasets.posteriordb`'s (NumPyro translations checked by NUTS against
posteriordb's reference draws); the reference is posteriordb's 10,000 draws.

Engines, each with its constructor defaults and ``--steps`` steps (default 2000, the step count
of the benchmark suite):

* every engine class that ``numpyro_gflow`` exports (``SVGD``, ``CoinSVGD``, ``KSDD``,
  ``CoinKSDD``, ``CoinLAWGD``, ``MSVGD``, ``SVMD``, ``CoinMSVGD``, ``SVNG``,
  ``IsoGaussianMixtureVI``, ``FBGVI``, ``MixFlow``) plus the documented options
  ``FBGVI-stochastic``, ``IsoMix-adaptive`` and ``MixFlow-meanfield`` (the paper's reference);
* ``NUTS`` (NumPyro, one chain, 1000 warmup + 1000 draws), ``SVI-AutoNormal`` and
  ``SVI-AutoMVN`` (NumPyro SVI, Adam(0.01), 5000 steps, one ELBO particle) and
  ``Pathfinder`` (BlackJAX's single-path Pathfinder from NumPyro's uniform start; skipped when
  BlackJAX is not installed: ``pip install -e '.[bench]'``).

Per fit: ``max_mean_err`` = max over scalar parameters of |mean - ref mean| / ref sd;
``max_sd_err`` = max of |sd / ref sd - 1|; ``energy``: the energy distance to 2000 reference
draws (each coordinate scaled by the reference sd) and ``baseline``, what as many exact
reference draws get (the other 8000); ``wall_s`` (the first call, compilation included) and
``compile_s`` (JAX's tracing and compiling within it, from ``jax.monitoring``); gradient
evaluations where the engine counts them; for a failure, the error message.

With ``BENCH_POINTS_DIR=DIR`` in the environment each gflow fit's points and trace are saved
there (``<posterior>__<engine>.npz``), so that its verdict can be re-checked after a change to
the checks without refitting (``benchmarks/experiments/diagnose/reverdict.py``).

Outputs in ``--out`` (default ``benchmarks/experiments/posteriordb``, kept in the repository):
``results.json`` (one record per fit; a rerun skips the fits already in it, so an interrupted
table resumes where it stopped; delete it, or pick rows with ``--posteriors``/``--engines``
after removing them, to measure again), then ``docs/posteriordb.md`` (the docs page
"Accuracy on real posteriors": the table, what "within NUTS accuracy" means, the per-engine
summary) and ``docs/posteriordb.png`` (engines x posteriors, colour = max mean error).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "experiments" / "posteriordb"
DOC_PAGE = ROOT / "docs" / "posteriordb.md"
DOC_PLOT = ROOT / "docs" / "posteriordb.png"

#: draws taken from engines that fit a density, from SVI guides, Pathfinder and NUTS
NUM_DRAWS = 1000
#: reference draws the energy distance compares against (a fixed subset of the 10,000)
ENERGY_REFERENCE = 2000
#: what posteriordb calls NUTS-level accuracy (its README): every mean within 0.1 reference
#: sd and every sd within 10 %
MEAN_OK, SD_OK = 0.1, 0.1

#: gflow rows: name -> (exported class name, constructor options beyond the defaults)
GFLOW = {
    "SVGD": ("SVGD", {}),
    "CoinSVGD": ("CoinSVGD", {}),
    "KSDD": ("KSDD", {}),
    "CoinKSDD": ("CoinKSDD", {}),
    "CoinLAWGD": ("CoinLAWGD", {}),
    "MSVGD": ("MSVGD", {}),
    "SVMD": ("SVMD", {}),
    "SVMD-dual": ("SVMD", {"precondition": None}),
    "CoinMSVGD": ("CoinMSVGD", {}),
    "SVNG": ("SVNG", {}),
    "IsoGaussianMixtureVI": ("IsoGaussianMixtureVI", {}),
    "IsoMix-adaptive": ("IsoGaussianMixtureVI", {"preconditioner": "adaptive"}),
    "FBGVI": ("FBGVI", {}),
    "FBGVI-stochastic": ("FBGVI", {"stochastic": True}),
    "MixFlow": ("MixFlow", {}),
    "MixFlow-meanfield": ("MixFlow", {"reference": "meanfield"}),
}
BASELINES = ("NUTS", "SVI-AutoNormal", "SVI-AutoMVN", "Pathfinder")
ENGINES = tuple(GFLOW) + BASELINES


# ----------------------------------------------------------------------------- one fit
#: the last gflow fit's result (its own verdict is taken after the timed fit)
_LAST_RESULT = [None]


def _fit(engine: str, post, steps: int, key):
    """(samples site -> (n, ...), grad_evals or None, note) of one engine on one posterior."""
    import jax

    if engine in GFLOW:
        import numpyro_gflow as gf
        from numpyro_gflow.engines.base import DensityEngine

        cls_name, opts = GFLOW[engine]
        eng = getattr(gf, cls_name)(post.model, **opts)
        res = eng.run(key, steps, *post.args, progress_bar=False, diagnose=False,
                      **post.kwargs)
        _LAST_RESULT[0] = res
        if isinstance(eng, DensityEngine):
            samples = res.get_samples(NUM_DRAWS, jax.random.fold_in(key, 1))
        else:
            samples = res.get_samples()
        grads = (res.stats or {}).get("grad_evals")
        if grads is None and not isinstance(eng, DensityEngine):
            grads = res.num_samples * steps
        return samples, grads, ""
    if engine == "NUTS":
        from numpyro.infer import MCMC, NUTS

        mcmc = MCMC(NUTS(post.model), num_warmup=1000, num_samples=NUM_DRAWS,
                    progress_bar=False)
        mcmc.run(key, *post.args, extra_fields=("num_steps", "diverging"), **post.kwargs)
        extra = mcmc.get_extra_fields()
        note = f"{int(extra['diverging'].sum())} divergences (sampling)"
        return mcmc.get_samples(), int(extra["num_steps"].sum()), note
    if engine.startswith("SVI-"):
        import numpyro
        from numpyro.infer import SVI, Trace_ELBO, autoguide

        guide = getattr(autoguide, "AutoNormal" if engine == "SVI-AutoNormal"
                        else "AutoMultivariateNormal")(post.model)
        svi = SVI(post.model, guide, numpyro.optim.Adam(0.01), Trace_ELBO())
        res = svi.run(key, 5000, *post.args, progress_bar=False, **post.kwargs)
        if not all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(res.params)):
            raise FloatingPointError("SVI parameters became non-finite")
        samples = guide.sample_posterior(jax.random.fold_in(key, 1), res.params, *post.args,
                                         sample_shape=(NUM_DRAWS,), **post.kwargs)
        return samples, 5000, f"final loss {float(np.mean(np.asarray(res.losses)[-100:])):.4g}"
    if engine == "Pathfinder":
        try:
            import blackjax
        except ImportError as e:
            raise ImportError("BlackJAX is not installed (pip install -e '.[bench]')") from e
        from jax.flatten_util import ravel_pytree
        from numpyro.infer.util import initialize_model

        init_key, fit_key, draw_key = jax.random.split(key, 3)
        info, potential_fn, postprocess_fn, _ = initialize_model(
            init_key, post.model, model_args=post.args, model_kwargs=post.kwargs,
            dynamic_args=False)
        flat0, unravel = ravel_pytree(info.z)

        def logdensity(x):
            return -potential_fn(unravel(x))

        state, _ = jax.jit(lambda k, x: blackjax.vi.pathfinder.approximate(k, logdensity, x))(
            fit_key, flat0)
        draws = blackjax.vi.pathfinder.sample(draw_key, state, NUM_DRAWS)
        draws = draws[0] if isinstance(draws, tuple) else draws
        samples = jax.vmap(lambda x: postprocess_fn(unravel(x)))(draws)
        return samples, None, "single path, BlackJAX defaults"
    raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")


def run_one(posterior: str, engine: str, steps: int, seed: int = 0) -> dict:
    """Fit, time and score one engine on one posterior (in this process)."""
    t0 = time.perf_counter()
    import jax
    from jax import monitoring

    from numpyro_gflow.datasets import posteriordb

    compile_s = [0.0]
    events = ("/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def listen(event, duration, **kwargs):
        if event in events:
            compile_s[0] += duration

    monitoring.register_event_duration_secs_listener(listen)
    post = posteriordb.load(posterior)
    row = {"posterior": posterior, "engine": engine, "steps": steps, "seed": seed,
           "cpus": _usable_cpus(), "import_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    try:
        samples, grads, note = _fit(engine, post, steps, jax.random.key(seed))
        samples = jax.block_until_ready(samples)
        row.update(wall_s=time.perf_counter() - t1, compile_s=compile_s[0], grad_evals=grads,
                   note=note)
        row.update(score(post, samples))
        if _LAST_RESULT[0] is not None:   # the result's own verdict (result.diagnose), untimed
            t2 = time.perf_counter()
            report = _LAST_RESULT[0].diagnose(jax.random.key(seed + 1))
            row["verdict"] = {"ok": report["ok"], "failed": report["failed"],
                              "values": {k: (float(v) if isinstance(v, (int, float)) else v)
                                         for k, v in report["values"].items()},
                              "skipped": list(report["skipped"])}
            row["diagnose_s"] = time.perf_counter() - t2
            points = os.environ.get("BENCH_POINTS_DIR")
            if points:   # the result's points and trace, to re-check them without refitting
                res = _LAST_RESULT[0]
                Path(points).mkdir(parents=True, exist_ok=True)
                np.savez(Path(points) / f"{posterior}__{engine}.npz",
                         z=np.asarray(res.unconstrained),
                         **{f"trace_{k}": np.asarray(v) for k, v in res.trace.items()})
    except Exception as e:  # a failing engine is a row, not a crash
        row.update(wall_s=time.perf_counter() - t1, compile_s=compile_s[0],
                   error=f"{type(e).__name__}: {e}".replace("\n", " ")[:400])
        if os.environ.get("BENCH_TRACEBACK"):
            traceback.print_exc()
    return row


def score(post, samples) -> dict:
    from numpyro_gflow.diagnostics import energy_distance

    flat = post.flatten(samples)
    x = np.stack([np.asarray(flat[k], np.float64) for k in post.reference], axis=-1)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise FloatingPointError(f"{int(bad.sum())} of {x.shape[0]} draws are non-finite")
    err = post.errors(samples)
    ref = np.stack([np.asarray(v, np.float64) for v in post.reference.values()], axis=-1)
    rng = np.random.default_rng(0)
    perm = rng.permutation(ref.shape[0])
    compare, pool = ref[perm[:ENERGY_REFERENCE]], ref[perm[ENERGY_REFERENCE:]]
    sd = ref.std(axis=0)
    n = min(x.shape[0], pool.shape[0])
    energy = energy_distance(x / sd, compare / sd, scale_by=None)
    baseline = energy_distance(pool[:n] / sd, compare / sd, scale_by=None)
    worst = int(np.argmax(err["mean_err"]))
    return {"draws": int(x.shape[0]), "max_mean_err": err["max_mean_err"],
            "max_sd_err": err["max_sd_err"], "worst_parameter": err["names"][worst],
            "mean_err": dict(zip(err["names"], map(float, err["mean_err"]))),
            "sd_err": dict(zip(err["names"], map(float, err["sd_err"]))),
            "energy": float(energy), "energy_baseline": float(baseline)}


# ----------------------------------------------------------------------------- the table
def run_all(posteriors, engines, steps, timeout, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    done = {(r["posterior"], r["engine"]) for r in rows}
    for p in posteriors:
        for e in engines:
            if (p, e) in done:
                continue
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "benchmarks.posteriordb", "--one", p, e,
                   "--steps", str(steps)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                      cwd=ROOT)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if lines:
                    row = json.loads(lines[-1])
                else:
                    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    row = {"posterior": p, "engine": e, "steps": steps,
                           "wall_s": time.perf_counter() - t0,
                           "error": f"process exited {proc.returncode}: {tail}"[:400]}
            except subprocess.TimeoutExpired:
                row = {"posterior": p, "engine": e, "steps": steps, "wall_s": float(timeout),
                       "error": f"timeout: not finished after {timeout} s"}
            rows.append(row)
            path.write_text(json.dumps(rows, indent=1))
            status = row.get("error") or (f"mean {row['max_mean_err']:.2f} "
                                          f"sd {row['max_sd_err']:.2f}")
            print(f"{p:42s} {e:22s} {row.get('wall_s', 0):7.1f}s  {status[:110]}", flush=True)
    return rows


def _short(name: str) -> str:
    return name.split("-")[0] if name.split("-")[0] != "eight_schools" else "eight_schools"


def _cell(r) -> str:
    if r.get("error"):
        return "fail"
    mark = {True: " ✓", False: " ⚠"}.get((r.get("verdict") or {}).get("ok"), "")
    return f"{r['max_mean_err']:.2f} / {r['max_sd_err']:.2f}{mark}"


#: the self-diagnosis issue's yardstick: a fit this far off must be flagged by its own checks
WRONG_MEAN, WRONG_SD = 0.5, 0.5


def wrong(r) -> bool:
    return (not r.get("error") and (r["max_mean_err"] > WRONG_MEAN
                                    or r["max_sd_err"] > WRONG_SD))


#: a reference sd whose two halves (5000 draws each) differ by more than this factor - 1 is
#: itself too noisy to judge an sd error of 50 % by
UNSTABLE_SD = 0.2


def unstable_sds(posterior: str) -> list[str]:
    """The posterior's parameters whose reference sd differs between the halves of its
    reference draws by more than `UNSTABLE_SD` (heavy tails: the sd yardstick is noise)."""
    from numpyro_gflow.datasets import posteriordb

    ref = posteriordb.load(posterior).reference
    out = []
    for k, v in ref.items():
        v = np.asarray(v, np.float64)
        a, b = v[: v.size // 2].std(), v[v.size // 2:].std()
        if max(a, b) / max(min(a, b), 1e-300) - 1 > UNSTABLE_SD:
            out.append(k)
    return out


def verdict_counts(rows: list[dict]) -> dict:
    """Misses (a wrong fit whose checks passed) and false alarms (a fit within NUTS accuracy
    that its checks flagged), over the rows that carry a verdict (the gflow engines'). A miss
    whose only wrong numbers are sds of parameters with an unstable reference sd is counted
    apart (``missed_noisy``)."""
    judged = [r for r in rows if r.get("verdict") is not None]
    bad = [r for r in judged if wrong(r)]
    good = [r for r in judged if within(r)]
    unstable = {p: unstable_sds(p) for p in {r["posterior"] for r in bad}}

    def noisy(r):
        if r["max_mean_err"] > WRONG_MEAN:
            return False
        off = [k for k, e in r["sd_err"].items() if e > WRONG_SD]
        return bool(off) and all(k in unstable[r["posterior"]] for k in off)

    missed = [r for r in bad if r["verdict"]["ok"]]
    return {"judged": len(judged), "wrong": len(bad),
            "missed": [r for r in missed if not noisy(r)],
            "missed_noisy": [r for r in missed if noisy(r)], "unstable": unstable,
            "within": len(good), "alarms": [r for r in good if not r["verdict"]["ok"]]}


def _verdict_section(rows: list[dict]) -> list[str]:
    c = verdict_counts(rows)
    if not c["judged"]:
        return []
    lines = ["", "## Does the result know? (its own checks)", "",
             "✓ / ⚠ after a cell: the fit's own verdict, `result.diagnose()` (what `run` "
             "warns with; see [Can I trust this result?](trust.md)), taken on the result "
             "without the reference. It should flag every fit more than "
             f"{WRONG_MEAN} reference sd off on a mean or {int(WRONG_SD * 100)} % off on an "
             "sd, and pass the fits within NUTS accuracy.", "",
             f"- fits judged: {c['judged']} (the gflow rows that ran to the end)",
             f"- wrong fits (mean error > {WRONG_MEAN} sd or sd error > "
             f"{int(WRONG_SD * 100)} %): {c['wrong']}, of which **missed** (verdict ok): "
             f"{len(c['missed']) + len(c['missed_noisy'])} ({len(c['missed_noisy'])} of them "
             "wrong only in the sd of a parameter whose reference sd is itself unstable: its "
             f"two halves of 5000 draws differ by more than {int(UNSTABLE_SD * 100)} %)",
             f"- fits within NUTS accuracy: {c['within']}, of which **false alarms** (flagged):"
             f" {len(c['alarms'])}"
             + (f" ({100 * (1 - len(c['alarms']) / c['within']):.0f} % passed)"
                if c["within"] else "")]
    judged = [r for r in rows if r.get("verdict") is not None]
    for check in ("tails", "spread"):
        lacking = [r for r in judged if check not in r["verdict"]["values"]
                   and check not in r["verdict"].get("skipped", [])]
        if lacking:
            engines = sorted({r["engine"] for r in lacking})
            lines.append(f"- without the `{check}` check (their verdicts were taken before it "
                         f"existed, and their points were not kept): {len(lacking)} rows "
                         f"({', '.join(engines)})")
    noisy = {p: v for p, v in c["unstable"].items() if v}
    if noisy:
        lines += ["", "Reference sds unstable between the halves of the reference draws: "
                  + "; ".join(f"{_short(p)}: {', '.join(v)}" for p, v in sorted(noisy.items()))]
    for title, group in (("Missed", c["missed"]),
                         ("Missed, wrong only in an unstable reference sd", c["missed_noisy"]),
                         ("False alarms", c["alarms"])):
        if group:
            lines += ["", f"{title}:", ""]
            for r in group:
                v = r["verdict"]
                vals = ", ".join(f"{k} {x:.3g}" if isinstance(x, (int, float)) else f"{k} {x}"
                                 for k, x in v["values"].items())
                lines.append(f"- {r['engine']} on {r['posterior']}: error "
                             f"{r['max_mean_err']:.2f} / {r['max_sd_err']:.2f}; failed "
                             f"{', '.join(v['failed']) or 'none'}; values {vals}")
    return lines


def within(r) -> bool:
    return (not r.get("error") and r["max_mean_err"] <= MEAN_OK and r["max_sd_err"] <= SD_OK)


#: docs/choosing.md's block that `choosing_block` writes (between these two lines)
CHOOSING_PAGE = ROOT / "docs" / "choosing.md"
CHOOSING_BEGIN = ("<!-- begin: generated by `python -m benchmarks.posteriordb` from "
                  "benchmarks/experiments/posteriordb/results.json; do not edit by hand -->")
CHOOSING_END = "<!-- end: generated -->"
#: the engines whose result is a set of particles (the others fit a density, or are baselines)
PARTICLE_ENGINES = ("SVGD", "CoinSVGD", "KSDD", "CoinKSDD", "CoinLAWGD", "MSVGD", "SVMD",
                    "SVMD-dual", "CoinMSVGD", "SVNG")


def choosing_block(rows: list[dict]) -> str:
    """The choosing page's summary of the table: per engine, on how many posteriors it is
    within NUTS accuracy, its median worst errors, how many fits ran to the end, how many of
    them its own checks flagged, its median first-call time; and the recommended defaults
    (most posteriors within NUTS accuracy, ties broken by the median worst mean error)."""
    import statistics

    total = len(posteriordb_names())
    stats = []
    for e in ENGINES:
        rs = [r for r in rows if r["engine"] == e]
        if not rs:
            continue
        ran = [r for r in rs if not r.get("error")]
        judged = [r for r in ran if (r.get("verdict") or {}).get("ok") is not None]
        walls = [r["wall_s"] for r in rs if r.get("wall_s")]

        def med(key, ran=ran):
            return statistics.median(r[key] for r in ran) if ran else float("nan")

        stats.append({"engine": e, "within": sum(within(r) for r in ran), "ran": len(ran),
                      "mean": med("max_mean_err"), "sd": med("max_sd_err"),
                      "flagged": sum(not r["verdict"]["ok"] for r in judged),
                      "judged": len(judged),
                      "wall": statistics.median(walls) if walls else float("nan")})
    stats.sort(key=lambda s: (-s["within"], s["mean"]))
    lines = [CHOOSING_BEGIN, "",
             f"| engine | within NUTS accuracy (of {total}) | median worst mean error (ref sd) "
             "| median worst sd error | ran to the end | flagged by its own checks | median "
             "first call (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in stats:
        flagged = f"{s['flagged']} of {s['judged']}" if s["judged"] else "-"
        lines.append(f"| {s['engine']} | {s['within']} | {s['mean']:.3g} | {s['sd']:.3g} | "
                     f"{s['ran']} | {flagged} | {s['wall']:.0f} |")
    gflow = [s for s in stats if s["engine"] in GFLOW]
    best = gflow[0] if gflow else None
    particle = next((s for s in gflow if s["engine"] in PARTICLE_ENGINES), None)
    nuts = next((s for s in stats if s["engine"] == "NUTS"), None)
    lines.append("")
    if best is not None:
        text = (f"**Recommended default: {best['engine']}**, within NUTS accuracy on "
                f"{best['within']} of {total} posteriors with its defaults")
        if nuts is not None:
            text += f" (NUTS with 1000 draws: {nuts['within']})"
        if particle is not None:
            text += (f"; among the particle engines, **{particle['engine']}** "
                     f"({particle['within']} of {total})")
        lines.append(text + ". Ranked by the number of posteriors within NUTS accuracy, then "
                     "by the median worst mean error.")
    lines += ["", CHOOSING_END]
    return "\n".join(lines)


def with_choosing_block(text: str, block: str) -> str:
    """``text`` (the choosing page) with its generated block replaced by ``block``."""
    start, end = text.find(CHOOSING_BEGIN), text.find(CHOOSING_END)
    if start < 0 or end < start:
        raise ValueError(f"{CHOOSING_PAGE} has no generated block (the lines {CHOOSING_BEGIN!r} "
                         f"... {CHOOSING_END!r})")
    return text[:start] + block + text[end + len(CHOOSING_END):]


def posteriordb_names() -> tuple:
    from numpyro_gflow.datasets.posteriordb import NAMES

    return tuple(NAMES)


def render(rows: list[dict], header: dict) -> str:
    posteriors = sorted({r["posterior"] for r in rows})
    engines = [e for e in ENGINES if any(r["engine"] == e for r in rows)]
    by = {(r["posterior"], r["engine"]): r for r in rows}
    lines = ["# Accuracy on real posteriors", "",
             "Every engine with its defaults on the 13 posteriors of posteriordb that Stan's "
             "Pathfinder paper used (NumPyro translations in `numpyro_gflow.datasets.posteriordb`, "
             "each checked by NUTS against posteriordb's 10,000 reference draws). Regenerate "
             "with `python -m benchmarks.posteriordb` (`make bench` runs it).", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    missing = len(set(ENGINES) - {"Pathfinder"}) * len(posteriordb_names()) - len(rows)
    if missing > 0:
        lines += ["", f"**Incomplete:** {missing} fits of the table are not measured yet (blank "
                  "cells or missing rows); `python -m benchmarks.posteriordb` resumes it."]
    lines += ["", "Each cell: **max |mean error|** in reference sds / **max |sd / ref sd - 1|**, "
              "over the posterior's scalar parameters; **bold** = within what posteriordb calls "
              f"NUTS accuracy (every mean within {MEAN_OK} sd and every sd within "
              f"{int(SD_OK * 100)} %); `fail` = the run raised (message below); ✓ / ⚠: the "
              "result's own verdict (`result.diagnose()`: passed / flagged; see below).", ""]
    head = "| engine | " + " | ".join(_short(p) for p in posteriors) + " | within |"
    lines += [head, "|---|" + "---:|" * len(posteriors) + "---:|"]
    for e in engines:
        cells, ok = [], 0
        for p in posteriors:
            r = by.get((p, e))
            if r is None:
                cells.append("")
                continue
            c = _cell(r)
            if within(r):
                ok += 1
                c = f"**{c}**"
            cells.append(c)
        lines.append(f"| {e} | " + " | ".join(cells) + f" | {ok} |")
    lines += _verdict_section(rows)
    lines += ["", "## Wall time and work", "",
              "Seconds of the first call (fresh process: construction, run and draws, "
              "compilation included) / gradient evaluations of the model's log density. A row "
              "re-run after the table was made may have shared the machine with other work "
              "(up to twice the idle time); `make bench` on an idle machine re-measures all.",
              "",
              head.replace(" within |", ""), "|---|" + "---:|" * len(posteriors)]
    for e in engines:
        cells = []
        for p in posteriors:
            r = by.get((p, e))
            if r is None:
                cells.append("")
            else:
                g = r.get("grad_evals")
                cells.append(f"{r.get('wall_s', float('nan')):.0f} s"
                             + (f" / {_si(g)}" if g else ""))
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    lines += ["", "## Energy distance", "",
              "Energy distance to 2000 reference draws (coordinates in reference sds); in "
              "brackets what as many exact reference draws get.", "",
              head.replace(" within |", ""), "|---|" + "---:|" * len(posteriors)]
    for e in engines:
        cells = []
        for p in posteriors:
            r = by.get((p, e))
            cells.append("" if r is None or r.get("error") else
                         f"{r['energy']:.3g} ({r['energy_baseline']:.2g})")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    lines += ["", "## Failures", ""]
    fails = [r for r in rows if r.get("error")]
    if not fails:
        lines.append("None.")
    for r in fails:
        lines.append(f"- {r['engine']} on {r['posterior']}: `{r['error'][:300]}`")
    return "\n".join(lines) + "\n"


def _si(n) -> str:
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    posteriors = sorted({r["posterior"] for r in rows})
    engines = [e for e in ENGINES if any(r["engine"] == e for r in rows)]
    by = {(r["posterior"], r["engine"]): r for r in rows}
    grid = np.full((len(engines), len(posteriors)), np.nan)
    for i, e in enumerate(engines):
        for j, p in enumerate(posteriors):
            r = by.get((p, e))
            if r is not None and not r.get("error"):
                grid[i, j] = max(r["max_mean_err"], 1e-3)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(posteriors), 0.9 + 0.38 * len(engines)))
    cmap = matplotlib.colormaps["RdYlGn_r"].copy()
    cmap.set_bad("0.25")
    im = ax.imshow(grid, cmap=cmap, norm=LogNorm(vmin=0.01, vmax=10.0), aspect="auto")
    for i in range(len(engines)):
        for j in range(len(posteriors)):
            v = grid[i, j]
            ax.text(j, i, "fail" if math.isnan(v) else f"{v:.2g}", ha="center", va="center",
                    fontsize=7, color="white" if math.isnan(v) or v > 3 else "black")
    ax.set_xticks(range(len(posteriors)), [_short(p) for p in posteriors], rotation=45,
                  ha="right", fontsize=8)
    ax.set_yticks(range(len(engines)), engines, fontsize=8)
    fig.colorbar(im, ax=ax, label="max |mean error| (reference sds)")
    ax.set_title("Engines with their defaults on posteriordb (grey: failed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _usable_cpus() -> int:
    """CPUs this process may run on (``taskset -c 1 ...`` gives 1)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def header_info(steps: int, timeout: int, render_only: bool = False) -> dict:
    import platform

    import jax
    import numpyro

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    when = time.strftime("%Y-%m-%d %H:%M") + f", commit {commit}"
    return {
        "run": (f"table rendered {when} from results.json, whose rows were measured at "
                "earlier commits, some re-run after a change to their engine (`make bench` "
                "re-measures all)") if render_only else when,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus ({_usable_cpus()} usable by the "
                   f"fits), JAX {jax.__version__} "
                   f"({jax.default_backend()}), NumPyro {numpyro.__version__}, float32",
        "settings": f"gflow engines {steps} steps with their constructor defaults; "
                    f"{NUM_DRAWS} draws from fitted densities; each fit in a fresh process, "
                    + (f"at most {timeout} s" if not render_only else
                       f"at most {timeout} s (a re-run row: up to 900 s)"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posteriors", default="")
    ap.add_argument("--engines", default="")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/posteriordb.*")
    ap.add_argument("--check-docs", action="store_true",
                    help="exit 1 if docs/choosing.md's generated block differs from results.json")
    ap.add_argument("--one", nargs=2, metavar=("POSTERIOR", "ENGINE"))
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one, steps=args.steps)), flush=True)
        return
    from numpyro_gflow.datasets import posteriordb

    posteriors = args.posteriors.split(",") if args.posteriors else list(posteriordb.NAMES)
    engines = args.engines.split(",") if args.engines else list(ENGINES)
    out = Path(args.out)
    if args.check_docs:
        rows = json.loads((out / "results.json").read_text())
        text = CHOOSING_PAGE.read_text()
        if with_choosing_block(text, choosing_block(rows)) != text:
            print(f"{CHOOSING_PAGE}: the generated block differs from {out / 'results.json'}; "
                  "run python -m benchmarks.posteriordb --render-only")
            raise SystemExit(1)
        print(f"{CHOOSING_PAGE}: the generated block is current")
        return
    if args.render_only:
        rows = json.loads((out / "results.json").read_text())
    else:
        rows = run_all(posteriors, engines, args.steps, args.timeout, out)
    if not args.no_docs:
        DOC_PAGE.write_text(render(rows, header_info(args.steps, args.timeout, args.render_only)))
        plot(rows, DOC_PLOT)
        CHOOSING_PAGE.write_text(with_choosing_block(CHOOSING_PAGE.read_text(),
                                                     choosing_block(rows)))
        print(f"wrote {DOC_PAGE}, {DOC_PLOT} and the table of {CHOOSING_PAGE}")


if __name__ == "__main__":
    main()
