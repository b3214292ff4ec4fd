"""Mini-batches at 10^6 rows: streamed and subsampled FB-GVI vs NUTS
(`minibatch_1e6.py` -> `MINIBATCH_1E6.md`)."""
