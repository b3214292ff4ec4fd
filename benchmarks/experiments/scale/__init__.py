"""Steps/s and peak memory vs particles and data rows
(`scale.py` -> `SCALE.md`, `scale.png`; part of `make bench`)."""
