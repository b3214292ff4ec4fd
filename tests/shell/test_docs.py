"""The documentation site builds with ``mkdocs build --strict``.

So a docstring that griffe cannot parse, an API page pointing at a name that no longer exists,
or a broken link between pages fails CI instead of the next docs deploy.
"""

import os
import sys
from pathlib import Path

import pytest

import background

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("mkdocs", reason="docs extras not installed (pip install -e '.[docs]')")
pytest.importorskip("mkdocstrings_handlers.python",
                    reason="docs extras not installed (pip install -e '.[docs]')")


def _build(workdir):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return ([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(workdir / "site")],
            {"cwd": ROOT, "env": env})


# (a job of tests/background.py: started early, it runs while the in-process tests do)
BUILD_JOB = background.job("docs: mkdocs build --strict", _build, timeout=120)


@pytest.mark.background(BUILD_JOB)
def test_docs_build_strict(tmp_path):
    done = background.result(BUILD_JOB, tmp_path)
    proc, site = done.proc, done.workdir / "site"
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (site / "index.html").exists()
    assert (site / "api" / "engines" / "index.html").exists()


def _renderer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_examples",
                                                  ROOT / "tools" / "render_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_every_example_has_a_current_rendered_page(script):
    # docs/examples/<name>.md is the script executed with its outputs and figures
    # (tools/render_examples.py); an example changed without rendering its page again fails here
    render = _renderer()
    page = ROOT / "docs" / "examples" / f"{script.stem}.md"
    assert page.exists(), f"no page: run .venv/bin/python tools/render_examples.py {script}"
    text = page.read_text()
    assert render.digest(script) in text.splitlines()[0], (
        f"{page.name} was rendered from another version of {script.name}: run "
        f".venv/bin/python tools/render_examples.py examples/{script.name}")
    images = [line.split("](", 1)[1].rstrip(")") for line in text.splitlines()
              if line.startswith("![")]
    assert images, f"{page.name} shows no figure"
    for image in images:
        assert (page.parent / image).exists(), image
    nav = (ROOT / "mkdocs.yml").read_text()
    assert f"examples/{script.stem}.md" in nav


def test_renderer_puts_outputs_and_figures_under_their_cells(tmp_path, monkeypatch):
    # the variables the renderer sets are restored after the test
    for name in ("GFLOW_FIGURES_DIR", "GFLOW_EXAMPLE_SMOKE", "MPLBACKEND"):
        monkeypatch.setenv(name, "")
    script = tmp_path / "tiny.py"
    script.write_text(
        "# ---\n# jupyter:\n#   jupytext: {}\n# ---\n\n"
        "# %% [markdown]\n# # A tiny notebook\n#\n# Some *text*.\n\n"
        "# %%\nimport os\nfrom pathlib import Path\nimport matplotlib.pyplot as plt\n"
        "x = 6 * 7\nprint('answer', x)\n\n"
        "# %% [markdown]\n# The plot:\n\n"
        "# %%\nfig, ax = plt.subplots()\nax.plot([0, 1], [0, x])\n"
        "fig.savefig(Path(os.environ['GFLOW_FIGURES_DIR']) / 'tiny.png')\n"
        "print('smoke', os.environ.get('GFLOW_EXAMPLE_SMOKE'))\n"
        "import warnings\nfor _ in range(3):\n    warnings.warn('careful')\n")
    render = _renderer()
    page = render.render_one(script, tmp_path / "out", smoke=True).read_text()
    lines = page.splitlines()
    assert render.digest(script) in lines[0]
    assert "# A tiny notebook" in page and "small-steps setting" in page
    assert "jupytext" not in page                     # the header is dropped
    first, second = page.index("answer 42"), page.index("![tiny.png](figures/tiny.png)")
    assert page.index("x = 6 * 7") < first < page.index("The plot:") < second
    assert "smoke 1" in page
    assert "UserWarning: careful (3 times)" in page   # a cell's warnings, once each
    assert (tmp_path / "out" / "figures" / "tiny.png").exists()
