"""Mirror maps on constrained domains (pure JAX): dual <-> primal and the log-Jacobian.

Shi, Liu & Mackey, "Sampling with Mirrored Stein Operators" (ICLR 2022). A mirror map ``psi``
on a domain gives a dual variable ``eta = grad psi(theta)`` in R^k; ``theta = grad psi*(eta)``.

* `EntropicSimplex` -- negative entropy on the simplex: ``eta_i = log theta_i - log theta_D``
  (first D-1 coordinates free), ``theta = softmax([eta, 0])``, ``log det = sum_i log theta_i``.
* `EntropicPositive` -- ``theta log theta - theta``: ``eta = log theta`` (shifted to
  ``(a, inf)`` for ``greater_than(a)``: ``eta = log(theta - a)``).
* `EntropicBox` -- the entropic map of the box scaled to ``(a, b)``: ``u = tanh(eta / 2)``,
  ``theta = a + (b - a)(u + 1) / 2``.
* `MirrorMap` -- the identity (unconstrained blocks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "EntropicBox",
    "EntropicPositive",
    "EntropicSimplex",
    "MirrorMap",
]


class MirrorMap:
    """One site's mirror map: dual <-> primal, the log-Jacobian and the free coordinates."""

    name = "identity"
    free_drops_last = False   # simplex: the last coordinate is determined by the others

    def to_primal(self, eta):
        return eta

    def to_dual(self, theta):
        return theta

    def log_det(self, eta):
        return jnp.zeros((), eta.dtype)

    def free(self, theta):
        return theta[..., :-1] if self.free_drops_last else theta


class EntropicSimplex(MirrorMap):
    name = "entropic-simplex"
    free_drops_last = True

    def to_primal(self, eta):
        return jax.nn.softmax(jnp.concatenate([eta, jnp.zeros_like(eta[..., :1])], -1), -1)

    def to_dual(self, theta):
        logt = jnp.log(theta)
        return logt[..., :-1] - logt[..., -1:]

    def log_det(self, eta):
        full = jnp.concatenate([eta, jnp.zeros_like(eta[..., :1])], -1)
        return jnp.sum(jax.nn.log_softmax(full, -1))


class EntropicPositive(MirrorMap):
    """``(theta - a) log (theta - a) - theta`` on ``(a, inf)`` (``a = 0``: the positive reals):
    ``eta = log(theta - a)``, ``theta = a + exp(eta)``."""

    name = "entropic-positive"

    def __init__(self, low=0.0):
        self.low = low

    def to_primal(self, eta):
        return self.low + jnp.exp(eta)

    def to_dual(self, theta):
        return jnp.log(theta - self.low)

    def log_det(self, eta):
        return jnp.sum(eta)


class EntropicBox(MirrorMap):
    name = "entropic-box"

    def __init__(self, low, high):
        self.low, self.high = low, high

    def to_primal(self, eta):
        return self.low + (self.high - self.low) * (jnp.tanh(eta / 2) + 1) / 2

    def to_dual(self, theta):
        u = 2 * (theta - self.low) / (self.high - self.low) - 1
        return 2 * jnp.arctanh(u)

    def log_det(self, eta):
        # d theta / d eta = (b - a) / 4 * sech^2(eta / 2); log sech^2 stably
        half = jnp.abs(eta / 2)
        log_sech2 = 2 * (jnp.log(2.0) - half - jnp.log1p(jnp.exp(-2 * half)))
        return jnp.sum(jnp.log((self.high - self.low) / 4) + log_sech2)
