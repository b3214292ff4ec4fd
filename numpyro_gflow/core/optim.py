"""Optax transformations shared by the particle engines."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from numpyro_gflow._validate import nonnegative_float, positive_float

__all__ = [
    "svgd_adagrad",
    "coin_betting",
    "coin_restarts",
    "as_optimizer",
]


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
            raise TypeError("optimizer must be an optax.GradientTransformation, "
                            f"got {type(optimizer).__name__}")
        return optimizer
    if step_size is None:
        raise ValueError("step_size is required (or pass an optax optimizer=)")
    return default(positive_float("step_size", step_size))


class CoinBettingState(NamedTuple):
    initial: optax.Params          # x_0: bets are made relative to the starting point
    max_grad: optax.Updates        # L_t, running max of |c|
    grad_sum: optax.Updates        # G_t, running sum of c
    abs_grad_sum: optax.Updates    # A_t, running sum of |c|
    reward: optax.Updates          # R_t, clipped running reward
    #: particles (rows of 2-D leaves; elements of others) restarted by the guard: in all
    #: updates so far, and in the latest one (int32 scalars)
    restarts: jax.Array | None = None
    last_restarts: jax.Array | None = None


def coin_restarts(state) -> tuple[int, int] | None:
    """``(in the run, at the last update)``: particles the coin-betting guard restarted, summed
    over every `CoinBettingState` inside ``state`` (host ints; None if there is none)."""
    coins = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, CoinBettingState))
             if isinstance(x, CoinBettingState) and x.restarts is not None]
    if not coins:
        return None
    return sum(int(c.restarts) for c in coins), sum(int(c.last_restarts) for c in coins)


def coin_betting(alpha: float = 0.0, initial_max: float = 1e-10) -> optax.GradientTransformation:
    """Learning-rate-free coin betting (Sharrock & Nemeth 2023, adaptive form of their experiments).

    Per coordinate, with ``c_t`` the ascent direction (the negated "gradient" optax receives):

        L_{t+1} = max(L_t, |c_t|),  G_{t+1} = G_t + c_t,  A_{t+1} = A_t + |c_t|
        R_{t+1} = max(0, R_t + c_t (x_t - x_0))
        x_{t+1} = x_0 + G_{t+1} / (L_{t+1} max(A_{t+1} + L_{t+1}, alpha L_{t+1}))
                        (L_{t+1} + R_{t+1})

    ``x_0`` is the parameter value at ``init``; ``L_0 = initial_max`` is tiny but positive (0
    would give 0/0 at a coordinate whose direction is still 0). ``alpha = 0`` (default) as in
    the paper's main experiments (100 in their BNN runs). Requires ``params`` in ``update``.

    Guard (the paper's, made per particle): a row of a 2-D parameter (one particle) that turns
    non-finite restarts from its ``x_0`` with fresh betting state, so one blown-up particle
    does not poison the others or stay stuck at NaN. The state counts the restarts
    (``restarts``, ``last_restarts``): the engines report them and warn when the last step
    restarted particles (a run whose particles are sent back to their start every step has
    not moved, however normal its result looks).
    """
    alpha = nonnegative_float("alpha", alpha)
    initial_max = positive_float("initial_max", initial_max)

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        none = jnp.asarray(0, jnp.int32)
        return CoinBettingState(
            params, jax.tree.map(lambda p: jnp.full_like(p, initial_max), params),
            zeros, zeros, zeros, none, none)

    def leaf(g, x, x0, L, G, A, R):
        c = -g
        L = jnp.maximum(L, jnp.abs(c))
        G = G + c
        A = A + jnp.abs(c)
        R = jnp.maximum(0.0, R + c * (x - x0))
        # = x0 + G / (L max(A + L, alpha L)) (L + R), in an order that cannot overflow: with
        # directions ~1e32 (one particle at a finite but absurd density, e.g. ARMA's explosive
        # starts at -1e34, drives every particle's kernel sum) L (A + L) is inf in float32,
        # the bet 0, and no particle ever moved
        new_x = x0 + G / jnp.maximum(A + L, alpha * L) * (1.0 + R / L)
        finite = jnp.isfinite(new_x)
        if new_x.ndim >= 2:  # rows are particles: restart a whole particle
            finite = jnp.all(finite, axis=tuple(range(1, new_x.ndim)), keepdims=True)
        new_x = jnp.where(finite, new_x, x0)
        L = jnp.where(finite, L, initial_max)
        G, A, R = (jnp.where(finite, v, 0.0) for v in (G, A, R))
        return new_x - x, L, G, A, R, jnp.sum(~finite).astype(jnp.int32)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("coin_betting needs params: call update(grads, state, params)")
        leaves, treedef = jax.tree.flatten(updates)
        others = [treedef.flatten_up_to(t) for t in (params, state.initial, state.max_grad,
                                                      state.grad_sum, state.abs_grad_sum,
                                                      state.reward)]
        results = [leaf(*args) for args in zip(leaves, *others)]
        parts = [treedef.unflatten([r[i] for r in results]) for i in range(5)]
        count = sum(r[5] for r in results)
        total = count if state.restarts is None else state.restarts + count
        return parts[0], CoinBettingState(state.initial, *parts[1:], total, count)

    return optax.GradientTransformation(init_fn, update_fn)
