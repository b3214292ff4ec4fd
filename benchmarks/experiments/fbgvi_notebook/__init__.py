"""The FB-GVI authors' logistic-regression experiment
(`fbgvi_notebook.py` -> `FBGVI_NOTEBOOK.md`, `.png`)."""
