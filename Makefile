# Set-up and checks. Both targets create .venv (Python 3.12+) on first use.
#   make demo   - install, then fit SVGD and NUTS on a real model and print the comparison
#   make test   - install with test extras, then run the default (non-slow) test suite
#   make test-slow - the long accuracy checks
#   make bench     - the benchmark table (not part of the tests)
#   make docs   - build the documentation site into site/ (mkdocs build --strict)
SHELL := /bin/bash
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# A 3.12+ interpreter: PYTHON=... override, then python3.13/python3.12 that actually run,
# then pyenv's installed versions. (The machine's default python3 is 3.11: pip would quietly
# install the old ArviZ 0.x there.)
define FIND_PYTHON
for c in $(PYTHON) python3.13 python3.12 python3 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do \
  if "$$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then echo "$$c"; exit 0; fi; \
done; exit 1
endef

.PHONY: demo test test-slow bench docs venv clean

$(VPY):
	@py=$$($(FIND_PYTHON)) || { echo "error: numpyro-gflow needs Python >= 3.12; none found (set PYTHON=/path/to/python3.12)" >&2; exit 1; }; \
	echo "creating $(VENV) with $$py ($$($$py --version))"; \
	"$$py" -m venv $(VENV)

$(STAMP): $(VPY) pyproject.toml
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test,demo]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VPY) examples/quickstart.py

test: $(STAMP)
	$(VPY) -m pytest

test-slow: $(STAMP)
	$(VPY) -m pytest -m slow

# every engine vs NUTS / SVI / NumPyro SteinVI on the model set; writes benchmarks/results/
bench: $(STAMP)
	$(VPY) -m benchmarks.run

docs: $(STAMP)
	$(VPY) -m mkdocs build --strict -d site

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache
