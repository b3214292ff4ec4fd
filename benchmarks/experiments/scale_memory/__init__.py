"""One blocked step's memory at 20,000 particles
(`scale_memory.py` -> `SCALE_MEMORY.md`, `SCALE_MEMORY_KSDD.md`; part of `make bench`)."""
