"""MixFlow on the paper's four 2-d targets vs NUTS
(`mixflow_targets.py` -> `MIXFLOW_TARGETS.md`)."""
