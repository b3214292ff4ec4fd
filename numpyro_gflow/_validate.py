"""Argument checks shared by the engines: errors name the argument and the value."""

from __future__ import annotations

import math
import numbers


def positive_float(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:
            value = float(value)  # numpy / jax scalars
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a positive number, got {type(value).__name__}") from None
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def positive_int(name: str, value, minimum: int = 1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)
