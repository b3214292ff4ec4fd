"""MixFlow with fewer flow maps: accuracy on the 13 posteriordb posteriors and the first call on
the breast-cancer regression, for ``(flow_length, num_leapfrog)`` settings below the defaults
(issue 19: MixFlow's first call on a CPU is above NUTS's, 1.25 million gradients of its 1000
draws being 2.2 s of it).

    python -m benchmarks.experiments.mixflow_cold.mixflow_cold [N,L ...]

Each (setting, posterior) fit runs in a fresh process (2000 reference steps, seed 0, 1000
draws, ``diagnose=False``); prints one line per fit and a markdown table (max mean error in
reference sds / max sd error, first-call seconds) to MIXFLOW_COLD.md beside this file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent


def one(name, N, L):
    import jax

    import numpyro_gflow as gf

    t0 = time.perf_counter()
    if name == "breast_cancer":
        from benchmarks.gpu import _model

        model, args, kwargs = _model(name)
        steps = 1000
    else:
        from numpyro_gflow.datasets import posteriordb

        post = posteriordb.load(name)
        model, args, kwargs = post.model, post.args, post.kwargs
        steps = 2000
    res = gf.MixFlow(model, flow_length=N, num_leapfrog=L).run(
        jax.random.key(0), steps, *args, progress_bar=False, diagnose=False, **kwargs)
    samples = res.get_samples(1000, jax.random.key(1))
    jax.block_until_ready(samples)
    wall = time.perf_counter() - t0
    out = {"posterior": name, "N": N, "L": L, "wall_s": wall,
           "step_size": res.stats["step_size"]}
    if name != "breast_cancer":
        err = post.errors(samples)
        out.update(max_mean_err=err["max_mean_err"], max_sd_err=err["max_sd_err"])
    return out


def main(settings):
    from numpyro_gflow.datasets import posteriordb

    names = ["breast_cancer"] + list(posteriordb.NAMES)
    rows = []
    for N, L in settings:
        for name in names:
            p = subprocess.run([sys.executable, "-m", "benchmarks.experiments.mixflow_cold."
                                "mixflow_cold", "--one", name, str(N), str(L)],
                               capture_output=True, text=True, cwd=ROOT, timeout=600)
            if p.returncode:
                rows.append({"posterior": name, "N": N, "L": L,
                             "error": p.stderr.strip().splitlines()[-1][:100]})
            else:
                rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    lines = ["| posterior | " + " | ".join(f"N={N}, L={L}" for N, L in settings) + " |",
             "|---|" + "---|" * len(settings)]
    for name in names:
        cells = []
        for N, L in settings:
            r = next(r for r in rows if r["posterior"] == name and (r["N"], r["L"]) == (N, L))
            if "error" in r:
                cells.append("error")
            elif "max_mean_err" in r:
                cells.append(f"{r['max_mean_err']:.2f} / {r['max_sd_err']:.2f}, "
                             f"{r['wall_s']:.0f} s")
            else:
                cells.append(f"{r['wall_s']:.1f} s")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (HERE / "MIXFLOW_COLD.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        main([tuple(int(v) for v in s.split(",")) for s in sys.argv[1:]] or [(100, 20), (50, 10)])
