"""The isotropic mixture VI paper's bimodal 2-d setting
(`isomix_paper.py` -> `ISOMIX_PAPER.md`)."""
