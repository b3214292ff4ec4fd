"""FB-GVI vs BW-SGD vs NumPyro SVI, ELBO per unit of work
(`fbgvi_curves.py` -> `FBGVI_CURVES.md`)."""
