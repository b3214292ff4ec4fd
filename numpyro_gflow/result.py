"""One result type for every engine."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_gflow.bridge import ModelBridge

__all__ = [
    "InferenceResult",
    "LazyStats",
    "latent_guide",
]


class LazyStats(Mapping):
    """An engine's end-of-run numbers (``result.stats``), some computed only when first read.

    ``values``: numbers known at the end of the run; ``lazy``: ``(keys, thunk)`` pairs, where
    ``thunk()`` returns a dict holding ``keys`` (computed once, when one of them is first read:
    e.g. MixFlow's ELBO estimate, which compiles and runs the flow and its inverse, a cost
    worth paying only when the number is wanted). A read-only mapping like a dict; `with_values`
    adds known numbers without computing the rest."""

    def __init__(self, values: dict | None = None, lazy=()):
        self._values = dict(values or {})
        self._lazy = {}
        for keys, thunk in lazy:
            for k in keys:
                self._lazy[k] = thunk

    def __getitem__(self, key):
        if key not in self._values and key in self._lazy:
            thunk = self._lazy[key]
            computed = thunk()
            for k in [k for k, t in self._lazy.items() if t is thunk]:
                self._values[k] = computed[k]
                del self._lazy[k]
        return self._values[key]

    def __contains__(self, key):
        return key in self._values or key in self._lazy

    def __iter__(self):
        return iter([*self._values, *self._lazy])

    def __len__(self):
        return len(self._values) + len(self._lazy)

    def __repr__(self):
        shown = {**self._values, **{k: "<computed when read>" for k in self._lazy}}
        return f"LazyStats({shown!r})"

    def with_values(self, **values) -> "LazyStats":
        """A copy with ``values`` added (the lazy numbers stay lazy)."""
        out = LazyStats({**self._values, **values})
        out._lazy = {k: t for k, t in self._lazy.items() if k not in values}
        return out


def with_stats(stats, **values):
    """``stats`` (None, a dict or `LazyStats`) with ``values`` added, without computing lazy
    numbers."""
    if isinstance(stats, LazyStats):
        return stats.with_values(**values)
    return {**(stats or {}), **values}


def latent_guide(bridge: ModelBridge, latent: Callable):
    """A NumPyro guide from a distribution over the flat unconstrained latent vector.

    ``latent(dim)`` declares the guide's ``numpyro.param`` sites and returns the distribution;
    its draw is an auxiliary site, pushed through NumPyro's transforms into each latent site
    (the pattern of NumPyro's own AutoContinuous guides), so
    ``Predictive(model, guide=guide, params=result.params, num_samples=...)`` works.
    """
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import biject_to

    def guide(*args, **kwargs):
        z = numpyro.sample("_gflow_latent", latent(bridge.dim), infer={"is_auxiliary": True})
        for name, value in bridge.unflatten(z).items():
            constrained = biject_to(bridge.supports[name])(value)
            numpyro.sample(name, dist.Delta(constrained, event_dim=jnp.ndim(constrained)))

    return guide


class InferenceResult:
    """What an engine's ``run`` returns.

    Attributes:
        engine: the engine's name.
        unconstrained: (n, d) flat points in NumPyro's unconstrained space (particles, or the
            engine's representative draws); given as a function of no arguments, they are
            made when first read (MixFlow: its draws cost seconds, and a user who asks for
            fresh ones with ``get_samples(n, key)`` need not wait for them).
        trace: dict of per-step arrays (length ``num_steps``), the engine's objective among them.
        state: the engine's final state (a NamedTuple), to continue or inspect.
        bridge: the `ModelBridge` the engine ran on.
        guide: a NumPyro guide, for engines that fit a density
            (``Predictive(model, guide=result.guide, params=result.params, num_samples=...)``);
            ``None`` for particle engines, whose samples go to ``Predictive`` directly.
        params: the guide's parameters (``None`` for particle engines).
        stats: scalar end-of-run numbers of the engine (MixFlow: its ELBO and standard error,
            the reference's ELBO, the chosen step size, the inversion error, gradient
            evaluations; a `LazyStats`, whose ELBOs and inversion error are computed when
            first read), or ``None``; also attributes of ``to_arviz()["trace"]``.
        flow: MixFlow's fitted flow (`numpyro_gflow.engines.mixflow.MixFlowResult`: sample,
            augmented-space density, ELBO), ``None`` for other engines.
        status: ``"ok"``, or why the run ended early (non-finite step, interruption).
        num_steps: steps the trace covers.
    """

    def __init__(self, engine: str, bridge: ModelBridge, model_args: tuple, model_kwargs: dict,
                 unconstrained: jax.Array, trace: dict, state=None,
                 sampler: Optional[Callable] = None, objective: str | None = None,
                 guide=None, params=None, log_q: Optional[Callable] = None,
                 elbo_fn: Optional[Callable] = None, stats: dict | None = None, flow=None,
                 log_ratios: Optional[Callable] = None):
        self.engine = engine
        self.bridge = bridge
        self.model_args = model_args
        self.model_kwargs = model_kwargs
        self._unconstrained = unconstrained
        # optional per-step diagnostics that were not asked for are None: left out
        self.trace = {k: np.asarray(v) for k, v in trace.items() if v is not None}
        self.state = state
        self.objective = objective
        self.guide = guide
        self.params = params
        self._sampler = sampler
        self._log_q = log_q
        self._elbo_fn = elbo_fn
        self.stats = stats
        self.flow = flow
        self._log_ratios = log_ratios
        self._samples = None
        #: the checks of `diagnose` (``run`` fills it in unless ``diagnose=False``)
        self.diagnostics: dict | None = None
        #: whether the run streamed its data (``data_loader``)
        self.streamed = False
        #: for a run on mini-batches: why the engine's settings do not suit them (None: no
        #: known problem, or full data); diagnose's ``minibatch`` check reports it
        self.minibatch_note = None
        #: "ok", or why the run ended early (non-finite step, interruption): see engine ``run``
        self.status = "ok"
        #: steps the trace covers
        self.num_steps = len(next(iter(self.trace.values()), []))

    @property
    def unconstrained(self) -> jax.Array:
        if callable(self._unconstrained):
            self._unconstrained = self._unconstrained()
        return self._unconstrained

    @unconstrained.setter
    def unconstrained(self, value):
        self._unconstrained = value
        self._samples = None

    @property
    def num_samples(self) -> int:
        return int(self.unconstrained.shape[0])

    def _constrain(self, z):
        return self.bridge.constrain_batch_jit(z, self.model_args, self.model_kwargs)

    def get_samples(self, num_samples: int | None = None, rng_key=None,
                    group_by_chain: bool = False, importance: str | None = None) -> dict:
        """Posterior samples in NumPyro's format: site name -> array, constrained space.

        Without arguments: the engine's points (for particle engines, the particles), leading
        dimension ``n``, deterministic sites included. With ``num_samples`` and ``rng_key``:
        fresh draws, for engines that fit a distribution. ``group_by_chain=True`` adds a leading
        chain dimension of size 1, as ``MCMC.get_samples`` does. ``importance="psis"`` (density
        engines): ``num_samples`` draws resampled (multinomially, with replacement) from as
        many fresh draws by their PSIS weights (`psis` returns the weights themselves): the
        moments move toward the posterior's where the fit's Pareto k_hat is below 0.7.
        """
        if importance not in (None, "psis"):
            raise ValueError(f"importance must be None or 'psis', got {importance!r}")
        if importance == "psis":
            if num_samples is None or rng_key is None:
                raise TypeError("get_samples(num_samples, rng_key, importance='psis'): give "
                                "both")
            k_draw, k_pick = jax.random.split(rng_key)
            fit = self.psis(num_samples, k_draw)
            idx = jax.random.categorical(k_pick, jnp.asarray(fit["log_weights"]),
                                         shape=(num_samples,))
            samples = jax.tree.map(lambda x: x[idx], fit["samples"])
            if group_by_chain:
                samples = jax.tree.map(lambda x: x[None], samples)
            return samples
        if num_samples is None and rng_key is None:
            if self._samples is None:
                self._samples = self._constrain(self.unconstrained)
            samples = self._samples
        else:
            if self._sampler is None:
                raise ValueError(
                    f"{self.engine} returns a fixed set of {self.num_samples} particles and has no "
                    "density to draw fresh samples from; call get_samples() without arguments."
                )
            if num_samples is None or rng_key is None:
                raise TypeError("get_samples(num_samples, rng_key): "
                                "give both to draw fresh samples")
            samples = self._constrain(self._sampler(rng_key, num_samples))
        if group_by_chain:
            samples = jax.tree.map(lambda x: x[None], samples)
        return samples

    def sampler_available(self) -> bool:
        """Whether the result is a fitted density that can draw afresh (density engines)."""
        return self._sampler is not None and (self._log_q is not None
                                              or self._log_ratios is not None)

    def importance_log_ratios(self, rng_key, num_samples: int):
        """``num_samples`` fresh unconstrained draws ``z`` (n, d) of the fitted density and
        their importance log-ratios ``log p(z) - log q(z)`` (MixFlow: on its augmented space,
        whose ``x``-marginal is the posterior)."""
        if not self.sampler_available():
            raise ValueError(f"{self.engine} has no density to draw from (its result is a set "
                             "of particles)")
        if self._log_ratios is not None:
            return self._log_ratios(rng_key, num_samples)
        z = self._sampler(rng_key, num_samples)
        # on the host: an eager subtraction would compile a program of its own
        return z, np.asarray(self._batch_log_density(z)) - np.asarray(self._log_q(z))

    def psis(self, num_samples: int, rng_key) -> dict:
        """Pareto-smoothed importance sampling of ``num_samples`` fresh draws against the
        posterior (ArviZ's PSIS): ``{"samples": the draws (NumPyro format), "log_weights":
        their normalised smoothed log weights, "pareto_k": k_hat, "ess": effective sample
        size}``. Weighted averages over the draws move the fit's moments toward the posterior
        when ``k_hat < 0.7``."""
        from numpyro_gflow.diagnose import psis

        z, log_ratio = self.importance_log_ratios(rng_key, num_samples)
        log_w, k_hat = psis(log_ratio)
        return {"samples": self._constrain(z), "log_weights": log_w, "pareto_k": k_hat,
                "ess": float(1.0 / np.sum(np.exp(2 * log_w))), "unconstrained": z}

    def diagnose(self, rng_key=None, num_draws: int = 1000) -> dict:
        """Whether this result can be trusted: ``{"ok", "values", "failed", "messages",
        "skipped"}`` (see `numpyro_gflow.diagnose`). Checks for every engine: finite points,
        a complete run, an objective that has stopped moving; density engines: PSIS Pareto
        k_hat (> 0.7 unreliable) and effective sample size of ``num_draws`` fresh draws;
        particle engines: a KSD goodness-of-fit test of the particles (level 0.01)."""
        from numpyro_gflow.diagnose import diagnose

        self.diagnostics = diagnose(self, rng_key, num_draws)
        return self.diagnostics

    def print_summary(self, prob: float = 0.9, **kwargs) -> None:
        """Print the per-parameter table (mean, sd, median, central ``prob`` interval) and the
        result's checks: `numpyro_gflow.print_summary`, as ``MCMC.print_summary`` does."""
        from numpyro_gflow.report import print_summary

        print_summary(self, prob, **kwargs)

    def log_density(self) -> jax.Array:
        """Unnormalised log posterior (unconstrained space, Jacobian included) of each point."""
        return self._batch_log_density(self.unconstrained)

    def _batch_log_density(self, z) -> jax.Array:
        """The model's log density (unconstrained, full data) at each row of ``z`` (n, d)."""
        return self.bridge.batch_log_density_jit(z, self.model_args, self.model_kwargs)

    def log_q(self, z, *args, **kwargs) -> jax.Array:
        """Log density of the fitted approximation at flat unconstrained points ``z`` (n, d)
        (MixFlow: of the latent alone, by importance sampling; extra arguments go to
        `MixFlowResult.marginal_log_density`)."""
        if self._log_q is None:
            raise ValueError(f"{self.engine} has no density (its result is a set of particles)")
        return self._log_q(z, *args, **kwargs)

    def elbo(self, rng_key, num_samples: int = 1000):
        """Monte Carlo ELBO of the fitted approximation, with its standard error."""
        from numpyro_gflow.diagnostics import elbo

        if self._elbo_fn is not None:   # the engine's own estimator (MixFlow: augmented space)
            return self._elbo_fn(rng_key, num_samples)
        if self._sampler is None or self._log_q is None:
            raise ValueError(f"{self.engine} has no density, so no ELBO")
        return elbo(self._batch_log_density, self._sampler, self._log_q, rng_key, num_samples)

    def log_likelihood(self, factors: bool = False) -> dict:
        """Pointwise log-likelihood of each observed site at each point: site -> (n, ...).
        ``numpyro.factor`` terms are not observations and are left out unless ``factors``."""
        return self.bridge.log_likelihood(self.unconstrained, self.model_args, self.model_kwargs,
                                          factors=factors)

    def to_arviz(self, log_likelihood: bool = True, factors: bool = False):
        """An ArviZ ``DataTree``.

        Groups: ``posterior`` (dims ``chain`` = 1, ``draw`` = points), ``log_likelihood`` (so
        ``az.loo`` works), ``observed_data``, ``sample_stats`` (``lp``: each point's log
        density) and ``trace`` (dim ``step``: the per-step objective and the engine's other
        per-step numbers; its attributes hold the engine's scalar end-of-run ``stats``, if any).
        ``log_likelihood`` holds the observed sites only (``numpyro.factor`` terms are not
        observations, and ``az.loo`` needs a single array); ``factors=True`` adds them.
        After `diagnose` (``run`` calls it by default) ``sample_stats`` and ``trace`` also carry
        its verdict as attributes: ``diagnose_ok`` (1/0), ``diagnose_failed`` (comma-separated
        check names) and ``diagnose_<check>`` (each value).
        """
        import xarray as xr
        from arviz_base import from_dict

        to_np = lambda tree: {k: np.asarray(v)[None] for k, v in tree.items()}  # noqa: E731
        groups = {
            "posterior": to_np(self.get_samples()),
            "sample_stats": {"lp": np.asarray(self.log_density())[None]},
        }
        if log_likelihood and self.bridge.observed_sites:
            groups["log_likelihood"] = to_np(self.log_likelihood(factors=factors))
            observed = self.bridge.observed_values(self.model_args, self.model_kwargs)
            groups["observed_data"] = {k: np.asarray(v) for k, v in observed.items()}
        dt = from_dict(groups, dims=self._obs_dims(groups))
        dt["trace"] = xr.DataTree(xr.Dataset(
            {k: (("step",), np.asarray(v)) for k, v in self.trace.items()},
            coords={"step": np.arange(1, len(next(iter(self.trace.values()), [])) + 1)},
            attrs={"engine": self.engine, "objective": self.objective or "",
                   # an engine's end-of-run numbers (MixFlow: ELBO, step size, inversion error)
                   **{k: v for k, v in (self.stats or {}).items()
                      if isinstance(v, (int, float, str))}},
        ))
        dt.attrs["inference_library"] = "numpyro_gflow"
        dt.attrs["engine"] = self.engine
        if self.diagnostics is not None:
            # the result's own checks (diagnose): attributes of sample_stats and trace
            attrs = {"diagnose_ok": int(self.diagnostics["ok"]),
                     "diagnose_failed": ",".join(self.diagnostics["failed"]),
                     **{f"diagnose_{k}": (float(v) if not isinstance(v, bool) else int(v))
                        for k, v in self.diagnostics["values"].items()}}
            for group in ("sample_stats", "trace"):
                node = dt[group]
                node.attrs = {**node.attrs, **attrs}
        return dt

    def _obs_dims(self, groups):
        # pointwise log-likelihood and observed values share dims, so az.loo can line them up
        dims = {}
        for k, v in groups.get("observed_data", {}).items():
            dims[k] = [f"{k}_dim_{i}" for i in range(np.ndim(v))]
        return dims

    def __repr__(self):
        shapes = {k: tuple(v.shape) for k, v in self.get_samples().items()}
        return f"InferenceResult(engine={self.engine!r}, samples={shapes})"
