"""Re-check the posteriordb table's fits from their saved points, without refitting.

    BENCH_POINTS_DIR=DIR python -m benchmarks.posteriordb ...     # saves each fit's points
    python -m benchmarks.experiments.diagnose.reverdict RESULTS.json DIR [--checks tails,spread]

For a particle engine's row the whole `result.diagnose()` is re-run on an `InferenceResult`
rebuilt from the saved particles and trace; for a density engine's row (whose PSIS checks need
the fitted density, not saved) only the checks on its points are (``--checks``, default
``tails,spread``), merged into the recorded verdict. The rows are rewritten in place.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np



def is_density(engine: str) -> bool:
    """Whether the table's row ``engine`` is a density engine (its class, from the table's own
    engine list)."""
    import numpyro_gflow as gf
    from benchmarks.posteriordb import GFLOW
    from numpyro_gflow.engines.base import DensityEngine

    return issubclass(getattr(gf, GFLOW[engine][0]), DensityEngine)


def rebuild(post, row, points):
    import numpyro_gflow as gf

    data = np.load(points)
    bridge = gf.ModelBridge.from_model(post.model, *post.args, **post.kwargs)
    trace = {k[len("trace_"):]: data[k] for k in data.files if k.startswith("trace_")}
    return gf.InferenceResult(row["engine"], bridge, post.args, post.kwargs,
                              jax.numpy.asarray(data["z"]), trace)


def main(argv=None):
    from numpyro_gflow import diagnose as dg
    from numpyro_gflow.datasets import posteriordb

    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("points")
    ap.add_argument("--checks", default="tails,spread")
    args = ap.parse_args(argv)
    path = Path(args.results)
    rows = json.loads(path.read_text())
    for row in rows:
        points = Path(args.points) / f"{row['posterior']}__{row['engine']}.npz"
        if row.get("verdict") is None or not points.exists():
            continue
        post = posteriordb.load(row["posterior"])
        res = rebuild(post, row, points)
        key = jax.random.key(row.get("seed", 0) + 1)
        if is_density(row["engine"]):
            v = row["verdict"]
            report = {"ok": True, "values": dict(v["values"]), "failed": list(v["failed"]),
                      "messages": {}, "skipped": {}}
            checks = args.checks.split(",")
            extra = {}
            if "is_moments" in checks:
                # its proposal is centred on the points and on the mode check's climbs
                z = jax.numpy.asarray(res.unconstrained)
                scratch = {"values": {}, "failed": [], "messages": {}, "skipped": {}}
                extra["modes"] = dg._mode_check(scratch, res, key, z,
                                                np.asarray(res.log_density()))
            for name in checks:
                # the is_moments check also writes sd_k
                names = (name, "sd_k") if name == "is_moments" else (name,)
                for nm in names:
                    report["values"].pop(nm, None)
                report["failed"] = [f for f in report["failed"] if f not in names]
                if name == "is_moments":
                    dg._is_moments_check(report, res, None, None, extra["modes"])
                else:
                    getattr(dg, f"_{name}_check")(report, res)
            report["ok"] = not report["failed"]
        else:
            report = dg.diagnose(res, key)
        row["verdict"] = {"ok": report["ok"], "failed": report["failed"],
                          "values": {k: (float(x) if isinstance(x, (int, float)) else x)
                                     for k, x in report["values"].items()},
                          "skipped": list(report["skipped"])}
        print(f"{row['posterior'][:28]:28s} {row['engine']:20s} err {row['max_mean_err']:.2f}/"
              f"{row['max_sd_err']:.2f} ok={report['ok']} failed={report['failed']}", flush=True)
    path.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
