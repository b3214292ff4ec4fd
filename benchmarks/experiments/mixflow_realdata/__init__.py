"""MixFlow on the diabetes regression vs NumPyro's flow guides
(`mixflow_realdata.py` -> `MIXFLOW_REALDATA.md`)."""
