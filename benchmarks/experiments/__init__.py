"""One-off experiments, one package each: ``benchmarks/experiments/<name>/`` holds the script
and the notes and plots it wrote (run one as ``python -m benchmarks.experiments.<name>.<script>``).

Unlike the suite at the top of ``benchmarks/`` (``run.py``, ``models.py``, ``references.py``),
these reproduce a paper's figure, check one claim or measure one cost; ``make bench`` runs
only ``scale`` and ``scale_memory`` of them. Tests import nothing from here.
"""
