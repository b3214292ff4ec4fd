# Set-up and checks. Both targets create .venv (Python 3.12+) on first use.
#   make demo   - install, then fit NUTS and four engines on a real model and print one comparison table
#   make test   - install with test extras, lint (ruff), then run the default (non-slow) test suite
#   make test-slow - the long accuracy checks
#   make bench     - the benchmark tables (not part of the tests; about 1.5 hours on 2 cores)
#   make docs   - build the documentation site into site/ (mkdocs build --strict)
#   make docs-examples - execute the example notebooks and render docs/examples/ (minutes)
SHELL := /bin/bash
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

# A 3.12+ interpreter: PYTHON=... if given (an error if it does not run or is older than
# 3.12), else python3.13/python3.12 that actually run, then pyenv's installed versions. (The
# machine's default python3 is 3.11: pip would quietly install the old ArviZ 0.x there.)
define FIND_PYTHON
if [ -n "$(PYTHON)" ]; then \
  if ! command -v "$(PYTHON)" >/dev/null 2>&1; then echo "error: PYTHON=$(PYTHON): no such interpreter" >&2; exit 2; fi; \
  if ! "$(PYTHON)" -c 'import sys' >/dev/null 2>&1; then \
    echo "error: PYTHON=$(PYTHON) does not run: $$("$(PYTHON)" -c 'import sys' 2>&1 | head -1)" >&2; exit 2; fi; \
  if ! "$(PYTHON)" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then \
    echo "error: PYTHON=$(PYTHON) is $$("$(PYTHON)" --version 2>&1 | head -1); numpyro-gflow needs Python >= 3.12" >&2; exit 2; fi; \
  echo "$(PYTHON)"; exit 0; \
fi; \
for c in python3.13 python3.12 python3 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do \
  if "$$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then echo "$$c"; exit 0; fi; \
done; echo "error: numpyro-gflow needs Python >= 3.12; none found (set PYTHON=/path/to/python3.12)" >&2; exit 1
endef

.PHONY: demo test test-slow bench docs docs-examples venv clean check-python

$(VPY):
	@py=$$($(FIND_PYTHON)) || exit 1; \
	echo "creating $(VENV) with $$py ($$($$py --version))"; \
	"$$py" -m venv $(VENV)

# PYTHON=... with an existing .venv made by another Python: say so instead of ignoring it
check-python:
	@if [ -n "$(PYTHON)" ] && [ -x "$(VPY)" ]; then \
	  want=$$($(FIND_PYTHON)) || exit 1; \
	  w=$$("$$want" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  h=$$($(VPY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  if [ "$$w" != "$$h" ]; then echo "error: PYTHON=$(PYTHON) is Python $$w but $(VENV) was made with Python $$h; run 'make clean' first" >&2; exit 2; fi; \
	fi

$(STAMP): $(VPY) pyproject.toml
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test,demo]'
	@touch $(STAMP)

venv: check-python $(STAMP)

demo: check-python $(STAMP)
	$(VPY) examples/quickstart.py

# the default suite on TEST_WORKERS pytest-xdist processes, tests handed out one by one and
# stolen by an idle worker (--dist worksteal: 12:08 where whole files per worker, loadfile,
# took 12:43 for the same CPU time: a long file at the end kept one core idle); a module
# fixture may then be computed on both workers. TEST_WORKERS=0 runs it in this process
TEST_WORKERS ?= 2
test: check-python $(STAMP)
	$(VPY) -m ruff check numpyro_gflow tests benchmarks examples tools
	$(VPY) -m pytest -n $(TEST_WORKERS) --dist worksteal

test-slow: check-python $(STAMP)
	$(VPY) -m pytest -m slow

$(BENCH_STAMP): $(STAMP)
	$(VPY) -m pip install --quiet -e '.[test,demo,bench]'
	@touch $(BENCH_STAMP)

# every engine vs NUTS / SVI / NumPyro SteinVI on the model set (writes benchmarks/results/);
# every engine's defaults on the 13 posteriordb posteriors (docs/posteriordb.md and .png);
# then scaling: steps/s and peak memory vs particles and data rows against NumPyro SteinVI and
# BlackJAX (benchmarks/experiments/scale/: SCALE.md, scale.png), and one blocked step's memory
# at 20,000 particles for SVGD and KSD descent (benchmarks/experiments/scale_memory/SCALE_MEMORY*.md)
bench: $(BENCH_STAMP)
	$(VPY) -m benchmarks.run
	$(VPY) -m benchmarks.posteriordb
	$(VPY) benchmarks/experiments/scale/scale.py
	$(VPY) benchmarks/experiments/scale_memory/scale_memory.py
	$(VPY) benchmarks/experiments/scale_memory/scale_memory.py ksdd

docs: $(STAMP)
	$(VPY) -m mkdocs build --strict -d site

# the example notebooks executed (full setting) into docs/examples/<name>.md with their outputs
# and figures; tests/shell/test_docs.py fails when an example changed and its page did not
docs-examples: $(STAMP)
	$(VPY) tools/render_examples.py

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache
