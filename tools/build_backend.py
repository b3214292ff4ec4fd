"""setuptools' build backend, behind a Python-version check.

pip resolves an editable install's dependencies before it checks ``requires-python``, so on an
older Python the first error is about a dependency (``No matching distribution found for
arviz>=1.0``). This backend stops with a message about the Python version instead.
"""

import sys

from setuptools.build_meta import *  # noqa: F401,F403  (the hooks pip calls)

if sys.version_info < (3, 12):
    raise RuntimeError(
        f"numpyro-gflow requires Python >= 3.12; this is Python {sys.version.split()[0]} "
        f"({sys.executable}). Use `make test` / `make demo`, which find a 3.12+ interpreter, or "
        "create the environment with python3.12 -m venv .venv")
