"""Coin SVGD vs tuned SVGD on real data: `COIN_REALDATA.md` only. Its numbers come from
``tests/engines/test_coin_realdata.py`` (the test is the script; see the note's "Reproducing")."""
