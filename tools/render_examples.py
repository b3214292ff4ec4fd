"""Renders the example notebooks into documentation pages with their outputs and figures.

Each ``examples/<name>.py`` (a jupytext "percent" script) is executed cell by cell in a fresh
process, in the full setting unless ``--smoke``; ``docs/examples/<name>.md`` gets its markdown
cells as text, its code cells as code blocks, each code cell's printed output under it, and the
figures the cell saved (``GFLOW_FIGURES_DIR``, as the examples do) as images in
``docs/examples/figures/``. The page records the SHA-256 of the script it was rendered from;
``tests/shell/test_docs.py`` fails when an example changed and its page was not rendered again.

    .venv/bin/python tools/render_examples.py                 # every example (several minutes)
    .venv/bin/python tools/render_examples.py examples/quickstart.py
    make docs-examples                                         # the same as the first line

The mkdocs build itself executes nothing: the pages are committed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
OUT = ROOT / "docs" / "examples"
FIGURES = "figures"
DIGEST_TAG = "<!-- rendered from {name}, source-sha256: {digest} -->"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cells(text: str) -> list[tuple[str, str]]:
    """``[(kind, source)]`` of a percent script, ``kind`` "markdown" or "code"; the jupytext
    header (a leading ``# ---`` block) and anything before the first ``# %%`` are dropped."""
    out, kind, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("# %%"):
            if kind is not None:
                out.append((kind, lines))
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    if kind is not None:
        out.append((kind, lines))
    result = []
    for kind, lines in out:
        if kind == "markdown":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
        source = "\n".join(lines).strip("\n")
        if source.strip():
            result.append((kind, source))
    return result


def _figures(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}


def _warning_lines(records) -> str:
    """The cell's warnings as a notebook shows them (category: message), each distinct one once
    with its count."""
    counts = {}
    for r in records:
        key = f"{r.category.__name__}: {r.message}"
        counts[key] = counts.get(key, 0) + 1
    return "".join(f"{key}" + (f" ({n} times)" if n > 1 else "") + "\n"
                   for key, n in counts.items())


def execute(path: Path, figures: Path) -> list[tuple[str, str, str, list[str]]]:
    """Runs the script's cells in order in one namespace (this process): ``[(kind, source,
    output, new figure names)]``. ``figures`` is where the cells save their figures."""
    figures.mkdir(parents=True, exist_ok=True)
    os.environ["GFLOW_FIGURES_DIR"] = str(figures)
    os.environ.setdefault("MPLBACKEND", "Agg")
    namespace = {"__name__": "__main__", "__file__": str(path)}
    sys.path.insert(0, str(path.parent))
    rendered = []
    try:
        for i, (kind, source) in enumerate(cells(path.read_text())):
            if kind == "markdown":
                rendered.append((kind, source, "", []))
                continue
            before = _figures(figures)
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer), warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                exec(compile(source, f"{path.name} (cell {i})", "exec"), namespace)  # noqa: S102
            after = _figures(figures)
            new = sorted(name for name, t in after.items() if before.get(name) != t)
            rendered.append((kind, source, buffer.getvalue() + _warning_lines(w), new))
    finally:
        sys.path.remove(str(path.parent))
    return rendered


def page(path: Path, rendered, setting: str, seconds: float) -> str:
    """The markdown page of one executed script."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    lines = [DIGEST_TAG.format(name=rel, digest=digest(path)), ""]
    header_done = False
    for kind, source, output, figures in rendered:
        if kind == "markdown":
            lines += [source, ""]
            if not header_done and source.lstrip().startswith("# "):
                lines += [f"*Rendered from `{rel}` ({setting} setting) on {when}, commit "
                          f"{commit}, {platform.machine()} with {os.cpu_count()} CPUs, in "
                          f"{seconds:.0f} s; run it yourself with `.venv/bin/python {rel}`.*",
                          ""]
                header_done = True
            continue
        lines += ["```python", source, "```", ""]
        if output.strip():
            lines += ["```text", output.rstrip("\n"), "```", ""]
        lines += [f"![{name}]({FIGURES}/{name})" for name in figures]
        if figures:
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def render_one(path: Path, out: Path, smoke: bool) -> Path:
    if smoke:
        os.environ["GFLOW_EXAMPLE_SMOKE"] = "1"
    else:
        os.environ.pop("GFLOW_EXAMPLE_SMOKE", None)
    t0 = time.perf_counter()
    rendered = execute(path, out / FIGURES)
    target = out / f"{path.stem}.md"
    target.write_text(page(path, rendered, "small-steps" if smoke else "full",
                           time.perf_counter() - t0))
    return target


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scripts", nargs="*", type=Path)
    ap.add_argument("--smoke", action="store_true", help="GFLOW_EXAMPLE_SMOKE=1 (fast, rough)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    scripts = [p.resolve() for p in args.scripts] or sorted(EXAMPLES.glob("*.py"))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.in_process:
        for path in scripts:
            print(f"wrote {render_one(path, args.out, args.smoke)}", flush=True)
        return
    for path in scripts:   # one fresh process per example, as a reader would run it
        command = [sys.executable, __file__, "--in-process", "--out", str(args.out), str(path)]
        if args.smoke:
            command.append("--smoke")
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
