"""Cost of the median-heuristic bandwidth (`bandwidth.py`; prints its table)."""
