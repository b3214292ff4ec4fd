"""SVNG vs SVGD on an ill-conditioned logistic regression
(`svng_conditioning.py` -> `SVNG_CONDITIONING.md`)."""
