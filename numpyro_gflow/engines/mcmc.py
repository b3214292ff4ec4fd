"""The one `numpyro.infer.mcmc.MCMCKernel` adapter of the engines.

`KernelAdapter` holds what every kernel of ours shares (the model, the constrained
postprocessing through the bridge, the batched-keys check); two kernels build on it:

* `EnsembleKernel` -- a particle engine as an ensemble kernel: with ``MCMC(engine,
  num_warmup=W, num_samples=S, num_chains=n, chain_method="vectorized")`` each chain is a
  particle and each MCMC step is one engine step (like ``numpyro.infer.AIES``). For the same
  key, the particles after ``W + S`` MCMC steps are those of ``engine.run(key, W + S)``. It uses
  the engine's own hooks and compile cache: the same bridge, initial points and step as ``run``.
* `numpyro_gflow.MixFlowKernel` -- the MixFlow map as a kernel (independent chains).

The chains of one ensemble interact (the particles repel each other), so MCMC's per-chain
diagnostics (r_hat, n_eff in ``mcmc.print_summary()``) do not apply: they come out alarming
(r_hat 4-12 for SVGD) even where the ensemble matches the posterior. ``gf.print_summary(mcmc)``
reads the ensemble after the last step as one sample instead, with the result's own checks
(`EnsembleKernel.ensemble_result`); ``mcmc.get_samples()`` pools the particles of every kept
step.
"""

from __future__ import annotations

import jax.numpy as jnp
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

__all__ = [
    "EnsembleKernel",
    "KernelAdapter",
]


class KernelAdapter(MCMCKernel):
    """Shared by our kernels: ``model``, ``postprocess_fn`` through the bridge set at ``init``."""

    #: the bridge of the inputs of the last ``init`` (MCMC's postprocess_fn takes no state)
    _kernel_bridge = None

    @property
    def model(self):
        return self._model

    @staticmethod
    def _batched(rng_key) -> bool:
        """Whether ``init`` got one key per chain (vectorized chains)."""
        return not (is_prng_key(rng_key) or jnp.ndim(rng_key) == 0)

    def _constrain_one(self, bridge, particle, args, kwargs):
        return bridge.constrain(particle, args, kwargs)

    def postprocess_fn(self, model_args, model_kwargs):
        bridge = self._kernel_bridge
        return lambda z: self._constrain_one(bridge, z, model_args, model_kwargs)

    def get_diagnostics_str(self, state):
        return ""


class EnsembleKernel(KernelAdapter):
    """Mixin: a particle engine as an ensemble ``MCMCKernel`` (one particle per chain)."""

    @property
    def sample_field(self):
        return "particles"

    @property
    def is_ensemble_kernel(self):
        return True

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):
        from numpyro_gflow.engines.base import Target
        from numpyro_gflow.engines.driver import compile_engine

        if not self._batched(rng_key):
            raise ValueError(
                f"{type(self).__name__} is an ensemble kernel: use "
                "MCMC(..., num_chains=n_particles, chain_method='vectorized') with "
                "num_chains >= 2 (each chain is a particle)."
            )
        compiled, dynamic = compile_engine(self, model_args, model_kwargs)
        self._kernel_bridge = compiled.bridge
        z = self._initial_points(compiled, dynamic, rng_key, init_params)
        z = self._from_unconstrained(z, compiled.bridge)
        return self._start(z, self._state_key(rng_key),
                           Target(compiled.bridge, model_args, model_kwargs),
                           given=init_params is not None)

    def sample(self, state, model_args, model_kwargs):
        from numpyro_gflow.engines.base import Target

        return self._step(state, Target(self._kernel_bridge, model_args, model_kwargs))[0]

    def ensemble_result(self, mcmc):
        """The ensemble after ``mcmc``'s last step as an `InferenceResult` (the particles are
        one sample of the posterior, pooled), to read with the result's own summary and checks
        (``gf.print_summary(mcmc)`` does this). MCMC's own ``print_summary`` treats each
        particle as an independent chain: the particles repel each other and each moves little
        per step once the ensemble has converged, so its r_hat and n_eff come out large and
        small even when the ensemble matches the posterior; they do not apply here."""
        from numpyro_gflow.result import InferenceResult

        if mcmc.sampler is not self or mcmc.last_state is None:
            raise ValueError("ensemble_result needs an MCMC that has run with this kernel")
        bridge = self._kernel_bridge
        z = self._to_unconstrained(mcmc.last_state.particles, bridge)
        return InferenceResult(type(self).__name__, bridge, tuple(mcmc._args),
                               dict(mcmc._kwargs), z, {}, state=mcmc.last_state,
                               objective=self.objective)
