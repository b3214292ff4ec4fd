"""Peak memory and wall time of one SVGD step vs particle count: dense vs row-blocked kernel sums.

Issue 9: 20,000 particles in d = 50 must complete a step on a 24 GiB machine, with peak memory
growing linearly in n on the blocked path. Each configuration runs in a fresh subprocess so
that its peak resident set size (``resource.getrusage(...).ru_maxrss``) is its own; we also
record XLA's compile-time estimate of the step's temporary buffers
(``compiled.memory_analysis().temp_size_in_bytes``), which needs no run, so the dense path
at n = 20,000 is reported from it alone.

The step is ``numpyro_gflow.core.svgd.step`` as the engines run it: RBF kernel with the median
heuristic (recomputed from the particles), the default AdaGrad optimizer, and the per-step
IMQ kernel Stein discrepancy diagnostic. The target is a standard normal in d = 50
(``score = -x``), so the model costs nothing and the kernel work is all that is measured.

    # writes SCALE_MEMORY.md
    nice .venv/bin/python benchmarks/experiments/scale_memory/scale_memory.py
    # writes SCALE_MEMORY_KSDD.md
    nice .venv/bin/python benchmarks/experiments/scale_memory/scale_memory.py ksdd

(both next to this script).
``ksdd``: one `numpyro_gflow.core.ksdd.step` instead (KSD descent: the gradient of the squared KSD,
differentiated through the score; IMQ kernel, unit scale, AdaGrad), whose blocked path
rematerialises each row block in the backward pass.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

D = 50
BLOCKED_N = (1000, 5000, 20000)
DENSE_N = (1000, 5000)
DENSE_COMPILE_ONLY_N = (20000,)
FIXED_H_N = (20000,)
BLOCK_SIZE = 512
HERE = os.path.dirname(os.path.abspath(__file__))


def _rss_mib() -> float:
    # current resident set size (Linux /proc), MiB
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(n: int, mode: str, run: bool, engine: str = "svgd") -> dict:
    import jax
    import jax.numpy as jnp

    from numpyro_gflow.core import ksdd, svgd
    from numpyro_gflow.core.kernels import IMQKernel, RBFKernel
    from numpyro_gflow.core.optim import svgd_adagrad

    block = None if mode == "dense" else BLOCK_SIZE
    optimizer = svgd_adagrad(0.05)

    def score_fn(x, rng_key):
        return -0.5 * jnp.sum(x**2, -1), -x

    if engine == "ksdd":
        kernel, core = IMQKernel(block_size=block), ksdd
    else:
        # "blocked-fixed-h": the blocked step with a fixed bandwidth (the median's cost left out)
        bw = 40.0 if mode == "blocked-fixed-h" else "median"
        kernel, core = RBFKernel(bw, block_size=block), svgd

    @jax.jit
    def one_step(state):
        return core.step(state, score_fn, kernel, optimizer)

    x0 = jax.random.normal(jax.random.key(0), (n, D)) * 2.0 + 1.0
    state = core.init(x0, optimizer, jax.random.key(1))
    jax.block_until_ready(state)
    out = {"n": n, "d": D, "mode": mode, "block_size": None if mode == "dense" else BLOCK_SIZE}
    t0 = time.perf_counter()
    compiled = one_step.lower(state).compile()
    out["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    out["xla_temp_mib"] = mem.temp_size_in_bytes / 2**20 if mem is not None else None
    if not run:
        return out
    out["rss_before_mib"] = _rss_mib()
    t0 = time.perf_counter()
    new_state, info = compiled(state)
    jax.block_until_ready((new_state, info))
    out["step_s"] = time.perf_counter() - t0
    # ru_maxrss is in KiB on Linux: the peak over the whole process (imports, compile, step)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["bandwidth"] = float(info.bandwidth)
    # the number compared between paths: SVGD's mean |phi|^2, KSD descent's squared KSD
    out["stein_sq_norm"] = float(info.ksd_sq if engine == "ksdd" else info.stein_sq_norm)
    out["finite"] = bool(jnp.all(jnp.isfinite(new_state.particles)))
    return out


def _spawn(n: int, mode: str, run: bool, engine: str = "svgd") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n), mode,
           "run" if run else "compile", engine]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if proc.returncode != 0:
        return {"n": n, "d": D, "mode": mode, "error": proc.stderr.strip().splitlines()[-1:]}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _table_rows(rows, last: str, spec: str) -> list[str]:
    """One markdown row per configuration; the last column is ``r[last]``."""
    out = []
    for r in rows:
        if "error" in r:
            out.append(f"| {r['n']} | {r['d']} | {r['mode']} | failed: {r['error']} | | | | | |")
            continue
        path = r["mode"] + (f" ({r['block_size']})" if r["block_size"] else "")
        if "step_s" not in r:
            path += ", compiled only"
        out.append(
            f"| {r['n']} | {r['d']} | {path} | {_fmt(r.get('step_s'), '.2f')} | "
            f"{r['compile_s']:.2f} | "
            f"{_fmt(r.get('peak_rss_mib'), '.0f')} | {_fmt(r.get('rss_before_mib'), '.0f')} | "
            f"{_fmt(r['xla_temp_mib'], '.1f')} | {_fmt(r.get(last), spec)} |")
    return out


def _reading(rows) -> list[str]:
    # growth of the temporaries with n, read off the table, and dense-vs-blocked agreement
    ok = [r for r in rows if "error" not in r and r["xla_temp_mib"] is not None]
    out = ["Reading:", ""]
    for mode in ("blocked", "dense"):
        pts = sorted((r["n"], r["xla_temp_mib"]) for r in ok if r["mode"] == mode)
        if len(pts) > 1:
            steps = ", ".join(f"x{b[1] / a[1]:.1f} for n x{b[0] / a[0]:.0f}"
                              for a, b in zip(pts, pts[1:]))
            out.append(f"* {mode}: XLA temporaries grow {steps}.")
    for n in sorted({r["n"] for r in ok}):
        pair = {r["mode"]: r for r in ok if r["n"] == n and "bandwidth" in r}
        if "blocked" in pair and "dense" in pair:
            b, d = pair["blocked"], pair["dense"]
            out.append(f"* n = {n}: bandwidth blocked {b['bandwidth']!r} vs dense "
                       f"{d['bandwidth']!r}; mean |phi|^2 blocked {b['stein_sq_norm']:.7g} vs "
                       f"dense {d['stein_sq_norm']:.7g}.")
    big = [r for r in ok if r["mode"] == "blocked" and "step_s" in r]
    if big:
        r = max(big, key=lambda r: r["n"])
        out.append(f"* n = {r['n']}, d = {r['d']} blocked: step completed in {r['step_s']:.1f} s "
                   f"with peak RSS {r['peak_rss_mib']:.0f} MiB (finite particles: {r['finite']}).")
        fixed = [f for f in ok
                 if f["mode"] == "blocked-fixed-h" and f["n"] == r["n"] and "step_s" in f]
        if fixed:
            out.append(f"  With a fixed bandwidth the same step takes {fixed[0]['step_s']:.1f} s: "
                       f"the rest is the exact median (33 counting passes over the n^2 distances, "
                       f"recomputed per pass to keep memory linear).")
    return out


def main(engine: str = "svgd"):
    if engine == "ksdd":
        return main_ksdd()
    rows = []
    plan = ([(n, "blocked", True) for n in BLOCKED_N] + [(n, "dense", True) for n in DENSE_N]
            + [(n, "dense", False) for n in DENSE_COMPILE_ONLY_N]
            + [(n, "blocked-fixed-h", True) for n in FIXED_H_N])
    for n, mode, run in plan:
        res = _spawn(n, mode, run)
        print(json.dumps(res), flush=True)
        rows.append(res)

    import jax
    lines = [
        "# One SVGD step vs particle count: peak memory and time (issue 9)",
        "",
        f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by "
        "`benchmarks/experiments/scale_memory/scale_memory.py` on "
        f"{platform.machine()} Linux, {os.cpu_count()} CPU cores (shared with other jobs: "
        f"times are indicative), "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        f"JAX {jax.__version__} on CPU, float32.",
        "",
        f"One `numpyro_gflow.core.svgd.step` (RBF kernel, median-heuristic bandwidth recomputed "
        f"from the particles, AdaGrad, per-step IMQ KSD diagnostic) on a standard normal target "
        f"in d = {D}, each configuration in a fresh process. "
        f"*blocked*: `RBFKernel(block_size={BLOCK_SIZE})`; "
        f"*dense*: `block_size=None` (n x n matrices); *blocked-fixed-h*: blocked with a fixed "
        f"bandwidth h = 40 instead of the median (what the step costs without the median). "
        f"Peak RSS is the process's maximum resident "
        f"set (`ru_maxrss`), imports and compilation included; *RSS before* is the resident set "
        f"just before the step (JAX, the compiled step and the particles); *XLA temp* is the "
        f"compiler's estimate of the step's temporary buffers (`memory_analysis()`). Step time "
        f"is the first run of the compiled step (compilation excluded).",
        "",
        "| n | d | path | step (s) | compile (s) | peak RSS (MiB) | RSS before step (MiB) "
        "| XLA temp (MiB) | bandwidth h |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += _table_rows(rows, "bandwidth", ".6g")
    lines += ["", *_reading(rows)]
    lines += (["", "Raw results (JSON lines):", "", "```"] + [json.dumps(r) for r in rows]
              + ["```", ""])
    with open(os.path.join(HERE, "SCALE_MEMORY.md"), "w") as f:
        f.write("\n".join(lines))


def main_ksdd():
    rows = []
    plan = ([(n, "blocked", True) for n in BLOCKED_N] + [(n, "dense", True) for n in DENSE_N]
            + [(n, "dense", False) for n in DENSE_COMPILE_ONLY_N])
    for n, mode, run in plan:
        res = _spawn(n, mode, run, "ksdd")
        print(json.dumps(res), flush=True)
        rows.append(res)
    import jax
    lines = [
        "# One KSD-descent step vs particle count: peak memory and time (issue 9)",
        "",
        f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by "
        "`benchmarks/experiments/scale_memory/scale_memory.py ksdd` on "
        f"{platform.machine()} Linux, {os.cpu_count()} CPU cores (shared with other jobs: "
        f"times are indicative), JAX {jax.__version__} on CPU, float32.",
        "",
        f"One `numpyro_gflow.core.ksdd.step` (the gradient of the squared KSD of the particles, "
        f"differentiated through the score; IMQ kernel with unit scale, AdaGrad) on a standard "
        f"normal target in d = {D}, each configuration in a fresh process. *blocked*: "
        f"`IMQKernel(block_size={BLOCK_SIZE})` (`kernels.stein_kernel_mean`: row blocks under "
        f"`lax.map`, each rematerialised in the backward pass by `jax.checkpoint`); *dense*: "
        f"`block_size=None`. Columns as in SCALE_MEMORY.md; *KSD^2* is the step's objective.",
        "",
        "| n | d | path | step (s) | compile (s) | peak RSS (MiB) | RSS before step (MiB) "
        "| XLA temp (MiB) | KSD^2 |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += _table_rows(rows, "stein_sq_norm", ".7g")
    lines += (["", "Raw results (JSON lines):", "", "```"] + [json.dumps(r) for r in rows]
              + ["```", ""])
    with open(os.path.join(HERE, "SCALE_MEMORY_KSDD.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(int(sys.argv[2]), sys.argv[3], sys.argv[4] == "run", sys.argv[5])))
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "svgd")
