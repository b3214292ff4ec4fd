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
            raise TypeError(f"{name} must be a positive number, "
                            f"got {type(value).__name__}") from None
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


def _real(name: str, value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:
            return float(value)  # numpy / jax scalars
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be {what}, got {type(value).__name__}") from None
    return float(value)


def nonnegative_float(name: str, value):
    value = _real(name, value, "a number >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def unit_fraction(name: str, value):
    """A number in (0, 1]."""
    value = _real(name, value, "a number in (0, 1]")
    if not 0 < value <= 1:
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
    return value


def positive_float_or(name: str, value, choices: tuple[str, ...]):
    """One of the string ``choices`` (e.g. ``"auto"``) or a positive finite number."""
    allowed = " or ".join(repr(c) for c in choices)
    if isinstance(value, str):
        if value not in choices:
            raise ValueError(f"{name} must be {allowed} or a positive number, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be {allowed} or a positive number, "
                            f"got {type(value).__name__}") from None
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be {allowed} or a positive finite number, got {value!r}")
    return value


def check_flag(name: str, value) -> bool:
    """A bool argument, or ``TypeError`` naming it."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value
