"""Optax transformations shared by the particle engines."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from numpyro_gflow._validate import positive_float

__all__ = ["svgd_adagrad", "as_optimizer"]


class SVGDAdagradState(NamedTuple):
    count: jax.Array
    historical_grad: optax.Updates


def svgd_adagrad(step_size: float, alpha: float = 0.9, fudge_factor: float = 1e-6
                 ) -> optax.GradientTransformation:
    """The step rule of the SVGD reference code (Liu & Wang 2016, ``svgd.py``).

    An AdaGrad with momentum on the squared direction: the first step sets the history to
    ``g^2``, later steps mix ``alpha * hist + (1 - alpha) * g^2``, and the update is
    ``-step_size * g / (fudge_factor + sqrt(hist))`` (optax minimises, so ``g`` is the negated
    ascent direction). Same as ``optax.rmsprop`` except for the first step's history and
    where ``eps`` sits.
    """
    step_size = positive_float("step_size", step_size)

    def init_fn(params):
        return SVGDAdagradState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        first = state.count == 0
        hist = jax.tree.map(
            lambda h, g: jnp.where(first, g**2, alpha * h + (1.0 - alpha) * g**2),
            state.historical_grad, updates)
        new_updates = jax.tree.map(
            lambda g, h: -step_size * g / (fudge_factor + jnp.sqrt(h)), updates, hist)
        return new_updates, SVGDAdagradState(state.count + 1, hist)

    return optax.GradientTransformation(init_fn, update_fn)


def as_optimizer(step_size, optimizer, default=svgd_adagrad) -> optax.GradientTransformation:
    """Resolve the engines' ``step_size=`` / ``optimizer=`` pair into one optax transformation."""
    if optimizer is not None:
        if step_size is not None:
            raise ValueError("give either step_size or optimizer, not both "
                             "(an optax optimizer carries its own learning rate)")
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
        return optimizer
    if step_size is None:
        raise ValueError("step_size is required (or pass an optax optimizer=)")
    return default(step_size)
