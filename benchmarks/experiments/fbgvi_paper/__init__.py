"""The FB-GVI paper's Gaussian-target experiment
(`fbgvi_paper.py` -> `FBGVI_PAPER.md`, `.png`)."""
