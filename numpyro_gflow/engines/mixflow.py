"""MixFlow on a NumPyro model: the engine, result and MCMC kernel over
`numpyro_gflow.core.mixflow`."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax import lax
from numpyro.infer.initialization import init_to_uniform
from numpyro.util import is_prng_key

from numpyro_gflow._validate import positive_float, positive_float_or, positive_int
from numpyro_gflow.bridge import ModelBridge, merge_static_args, split_static_args
from numpyro_gflow.compilation import SHORT, Background, brief_jit
from numpyro_gflow.core.mixflow import (
    FlowPoint,
    MixFlowParams,
    point,
    acceptance,
    elbo,
    flow_map,
    inversion_error_at,
    log_density,
    log_laplace,
    laplace_icdf,
    ReferenceState,
    reference_gaussian,
    reference_init,
    reference_step,
    sample_many,
    sample_reference,
    sample_references,
)
from numpyro_gflow.core.numerics import NEWTON_STEPS, best_laplace, spread_starts
from numpyro_gflow.engines.base import DensityEngine, Target, fold_key
from numpyro_gflow.engines.driver import compile_engine
from numpyro_gflow.engines.mcmc import KernelAdapter
from numpyro_gflow.result import InferenceResult, LazyStats, latent_guide

__all__ = [
    "MixFlow",
    "MixFlowResult",
    "MixFlowKernel",
]

#: extra starting points (uniform in (-2, 2), unconstrained) of the full-rank reference's
#: Laplace mode search, beside the init strategy's point (`numerics.best_laplace`)
LAPLACE_STARTS = 7

#: the result's keys (step-size tuning, ELBO, draws, inversion check): the run's key folded
#: with RESULT_KEY + 0 .. 3
RESULT_KEY = 0x3F10


class _StaticTarget(NamedTuple):
    """Hashable handle on a model and the static part of its inputs (a jit static argument)."""

    bridge: ModelBridge
    static: tuple
    treedef: object

    def value_and_grad(self, dynamic):
        args, kwargs = merge_static_args(dynamic, self.static, self.treedef)
        # the flow must be deterministic to be invertible: always the full data
        return lambda x: self.bridge.value_and_grad(x, args, kwargs)


def _split(bridge, args, kwargs):
    dynamic, static, treedef, _ = split_static_args(args, kwargs)
    static = tuple(static)
    try:
        hash(static)
    except TypeError:
        static = _Unhashable(static)
    return _StaticTarget(bridge, static, treedef), dynamic


class _Unhashable(tuple):
    """Static inputs that cannot be hashed: compared by identity (compiles once per object)."""

    def __new__(cls, value):
        self = super().__new__(cls, ())
        self.value = value
        return self

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _Unhashable) and other.value is self.value

    def __iter__(self):
        return iter(self.value)


@partial(jax.jit, static_argnames=("target", "flow_length", "num_leapfrog", "num_samples"))
def _jit_sample(rng_key, params, dynamic, target, flow_length, num_leapfrog, num_samples):
    return sample_many(rng_key, num_samples, params, target.value_and_grad(dynamic),
                       flow_length, num_leapfrog)


@partial(jax.jit, static_argnames=("target", "flow_length", "num_leapfrog", "num_samples"))
def _jit_log_ratios(rng_key, params, dynamic, target, flow_length, num_leapfrog, num_samples):
    # fresh draws of the flow and log pibar - log q_N at each (augmented space: x, rho, u)
    vg = target.value_and_grad(dynamic)
    p = sample_many(rng_key, num_samples, params, vg, flow_length, num_leapfrog)
    log_q = jax.vmap(lambda q: log_density(q, params, vg, flow_length, num_leapfrog))(p)
    return p.x, p.log_p + log_laplace(p.rho) - log_q


@partial(jax.jit, static_argnames=("target", "flow_length", "num_leapfrog"))
def _jit_log_density(x, rho, u, params, dynamic, target, flow_length, num_leapfrog):
    vg = target.value_and_grad(dynamic)

    def one(x, rho, u):
        return log_density(point(x, rho, u, vg), params, vg, flow_length, num_leapfrog)

    return jax.vmap(one)(x, rho, u)


@partial(jax.jit, static_argnames=("target", "flow_length", "num_leapfrog", "num_samples"))
def _jit_elbo(rng_key, params, dynamic, target, flow_length, num_leapfrog, num_samples):
    return elbo(rng_key, params, target.value_and_grad(dynamic), flow_length, num_leapfrog,
                num_samples)


@partial(jax.jit, static_argnames=("target", "num_maps", "num_leapfrog", "num_samples"))
def _jit_inversion_error(rng_key, params, dynamic, target, num_maps, num_leapfrog, num_samples):
    vg = target.value_and_grad(dynamic)
    return jax.vmap(lambda z: inversion_error_at(z, params, vg, num_maps, num_leapfrog))(
        sample_references(rng_key, num_samples, params, vg))


def _flow_params(reference, step_scale: str):
    """The fitted reference's ``MixFlowParams`` (``step_size`` = the per-coordinate unit the
    candidate step sizes multiply) and whether it is finite; ``reference`` =
    `_reference_fields` of the fit's state. Steps in units of the reference: its
    per-coordinate sd or (full rank) its whitened coordinates ``y = L^-1 (x - loc)``, where
    ``q0`` is a standard normal (``step_scale="reference"``); else the same step everywhere."""
    loc, log_scale, off_diag, center, whiten = reference
    loc, scale, tril = reference_gaussian(
        ReferenceState(loc, log_scale, None, None, off_diag, center, whiten))
    arrays = (loc, scale) + (() if tril is None else (tril,))
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))
    if step_scale == "reference" and tril is None:
        unit, matrix = scale, None
    else:
        unit, matrix = jnp.ones_like(scale), tril if step_scale == "reference" else None
    return MixFlowParams(loc, scale, unit, tril, matrix), finite


def _reference_fields(state: ReferenceState) -> tuple:
    """What `_flow_params` reads of a reference fit's state (not its optimiser state)."""
    return state.loc, state.log_scale, state.off_diag, state.center, state.whiten


_jit_flow_params = brief_jit(_flow_params, static_argnames=("step_scale",))


@brief_jit(level=SHORT, static_argnames=("target", "step_scale", "flow_length", "num_leapfrog",
                                         "num_samples"))
def _jit_tune_elbo(rng_key, reference, candidates, dynamic, target, step_scale, flow_length,
                   num_leapfrog, num_samples):
    """The fitted reference's params and finiteness (`_flow_params`), and the ELBO (and SE) of
    each candidate step size, the same draws of z0 for all (paired), from the run's key
    folded with `RESULT_KEY` (in this program: one compiled program fewer on a first call)."""
    vg = target.value_and_grad(dynamic)
    params, finite = _flow_params(reference, step_scale)
    rng_key = jax.random.fold_in(rng_key, RESULT_KEY)

    def one(s):
        return elbo(rng_key, params._replace(step_size=s * params.step_size), vg, flow_length,
                    num_leapfrog, num_samples)

    return lax.map(one, candidates), params, finite


@brief_jit(level=SHORT, static_argnames=("target", "step_scale", "num_leapfrog", "num_samples"))
def _jit_tune_acceptance(rng_key, reference, candidates, dynamic, target, step_scale,
                         num_leapfrog, num_samples):
    """As `_jit_tune_elbo`, with the mean acceptance probability (and SE) of one map's leapfrog
    from draws of q0 per candidate step size (the same draws for all)."""
    vg = target.value_and_grad(dynamic)
    params, finite = _flow_params(reference, step_scale)
    starts = sample_references(jax.random.fold_in(rng_key, RESULT_KEY), num_samples, params, vg)

    def one(s):
        a = jax.vmap(lambda p: acceptance(p, params._replace(step_size=s * params.step_size), vg,
                                          num_leapfrog))(starts)
        return jnp.mean(a), jnp.std(a) / jnp.sqrt(num_samples)

    return lax.map(one, candidates), params, finite


class MixFlowFit(NamedTuple):
    """What a fitted MixFlow needs: reference, step, and the model handle."""

    params: MixFlowParams
    flow_length: int
    num_leapfrog: int
    target: _StaticTarget
    dynamic: list


class MixFlow(DensityEngine):
    """Mixed variational flow (MixFlow) of uncorrected Hamiltonian dynamics.

    Args:
        model: a NumPyro model with continuous latent sites.
        flow_length: ``N``, the number of flow maps the MixFlow averages over (authors:
            100-2000). Sampling and density evaluation each cost up to ``N`` flow maps, one map
            ``num_leapfrog + 1`` gradient evaluations.
        step_size: leapfrog step in units of the reference's per-coordinate sd (the vector
            step is ``step_size * scale``; with ``step_scale="unit"`` the same step in every
            coordinate). ``"auto"`` (default): chosen from ``step_size_grid``
            by ``step_size_rule``.
        step_size_rule: ``"acceptance"`` (default): the largest candidate whose one-map
            leapfrog trajectory from draws of ``q0`` has mean ``min(1, exp(-Delta H))`` of at
            least ``target_accept`` (the acceptance rate a Metropolis-corrected HMC would have;
            cheap: one map per draw, independent of ``N``). ``"elbo"``: the best ELBO estimate
            (the paper's criterion; ``num_tune_samples`` trajectories of ``3N - 2`` maps per
            candidate). The augmented-space ELBO penalises momenta off their Laplace law,
            which with Laplace momentum hardly affects the positions (they move by
            ``+-eps`` whatever ``|rho|``): on the banana it picks steps 5x smaller than the
            acceptance rule, whose draws are far closer to the posterior (energy distance 0.0012
            vs 0.056 at N = 1000; see the docs).
        target_accept: the acceptance rule's threshold (default 0.9).
        num_leapfrog: ``L`` leapfrog steps per flow map (authors: 200 on their banana, 80-100 on
            the funnel; longer maps mix faster per map, cost more per map).
        reference: ``"fullrank"`` (default) or ``"meanfield"`` (the paper's).
            ``"meanfield"``: ``q0``'s Gaussian is a mean-field Gaussian VI fit
            (reparameterised ELBO gradients, Adam from ``reference_learning_rate`` halving every
            1000 steps, ``reference_mc_samples`` draws per step, for ``num_steps`` steps of
            ``run``; the mean starts at ``init_strategy``'s point, the sd at 0.1), as the authors
            do (they run 50,000-100,000 steps; 2,000-5,000 suffice on their 2-d targets).
            ``"fullrank"``: ``q0``'s Gaussian has a full covariance: the Laplace approximation
            (``map_steps`` Adam steps then Newton steps from ``init_strategy``'s point and 7 more
            uniform in (-2, 2), the highest mode kept; ``W`` with ``W W^T`` the inverse Hessian,
            `numerics.whitening`), refined by full-rank Gaussian VI in the
            whitened coordinates ``y = W^-1 (x - mode)`` (learning rate 0.005 there). With
            ``step_scale="reference"`` the leapfrog runs in the reference's whitened
            coordinates too (``x = loc + L y``, ``L`` its Cholesky factor): a fixed linear change
            of variables, so volume and the Hamiltonian are preserved as before. O(d^2) per
            leapfrog step and d Hessian-vector products per Newton step, for correlated
            posteriors of moderate ``d`` (on diabetes regression, d = 12, the mean-field MixFlow's
            ELBO was 1.4 nats below the exact evidence, the full-rank one 0.01-0.04; docs).
            Why it is the default: a mean-field reference cannot see a correlated posterior, and
            the flow's maps must then cross it with steps sized by the narrowest direction: on
            posteriordb's kidiq and earnings regressions (uncentred predictors, correlations
            0.99-0.999) the mean-field MixFlow ended 11-12 reference sds off, the full-rank one
            0.04-0.05 (2000 steps).
            Or ``(loc, scale)``: flat unconstrained arrays (length ``d``) or dicts site ->
            unconstrained array, the starting point of the mean-field fit; ``scale`` a ``(d, d)``
            lower-triangular Cholesky factor starts a full-rank fit there (no Laplace step).
            ``run(key, 0, ...)`` keeps a given reference as given.
        map_steps: Adam steps of the ``"fullrank"`` reference's mode search (default 200).
        reference_learning_rate: the reference fit's Adam rate (``"auto"``: 0.05 mean-field,
            0.005 full rank).
        step_size_grid: the candidates of ``"auto"`` (default: 0.005 to 1.28, factors of sqrt 2).
        num_tune_samples: draws of ``z0`` per candidate step size (the same for all).
        num_draws: the draws ``result.get_samples()`` returns (made when first read: a
            draw costs up to ``N`` maps), and of the final ELBO estimate.
        step_scale: ``"reference"`` (default): the leapfrog step of each coordinate is
            ``step_size`` times the reference's sd there (like a diagonal mass matrix);
            ``"unit"``: the same ``step_size`` in every coordinate, as the authors' code
            (``HF_params(0.016 * ones(d), ...)``). With Laplace momentum a coordinate moves by
            exactly its step per leapfrog, so this sets how far each coordinate travels per map.
            On the authors' banana (x1 sd 10) ``"unit"`` at step 0.016 gave ELBO -0.44 / -0.34 /
            -0.32 at N = 500 / 1000 / 2000 where ``"reference"`` peaked at -0.46 (docs).
        init_strategy: the reference mean's initial value (NumPyro init strategy).

    ``run(rng_key, num_steps, *args, **kwargs)`` fits the reference (``num_steps`` steps; 0 with a
    given reference), picks the step size and returns an `InferenceResult` whose ``flow``
    attribute (a `MixFlowResult`) has the three operations: ``sample``, ``log_density`` (on the
    augmented space) and ``elbo``. ``result.get_samples(num_samples, rng_key)`` draws afresh;
    ``result.trace`` holds the reference fit's per-step ``elbo``; ``result.stats`` the MixFlow's
    ELBO (augmented space, with its standard error) next to the reference's, the chosen step
    size, each candidate's tuning number, the inversion error ``max |z - T^-N T^N z|`` over 8
    draws, and ``grad_evals`` (model gradients of the run and of the result's ELBOs, inversion
    check and ``num_draws`` points, all counted: those are computed when first read).
    The model's args must not change the latent dimension between ``run`` and later use.
    """

    objective = "elbo"
    min_steps = 0
    # the reference fit (a few gradients per step) is a small part of the work: its loop is
    # compiled at LLVM level 1 (0.94 -> 0.56 s of XLA on the breast-cancer regression)
    loop_level = SHORT
    supports_streaming = False   # the flow map and its density need the exact log density

    def __init__(self, model, *, flow_length: int = 100, step_size="auto", num_leapfrog: int = 20,
                 reference="fullrank", step_size_rule: str = "acceptance",
                 target_accept: float = 0.9,
                 step_size_grid=tuple(0.005 * 2 ** (k / 2) for k in range(17)),
                 num_tune_samples: int = 64, num_draws: int = 1000,
                 reference_learning_rate="auto", reference_mc_samples: int = 8,
                 step_scale: str = "reference", map_steps: int = 200,
                 init_strategy=init_to_uniform):
        super().__init__(model, init_strategy=init_strategy)
        self.flow_length = positive_int("flow_length", flow_length)
        self.num_leapfrog = positive_int("num_leapfrog", num_leapfrog)
        if step_scale not in ("reference", "unit"):
            raise ValueError(f"step_scale must be 'reference' or 'unit', got {step_scale!r}")
        self.step_scale = step_scale
        self.step_size = positive_float_or("step_size", step_size, ("auto",))
        grid = tuple(positive_float("step_size_grid", s) for s in np.ravel(step_size_grid))
        if not grid:
            raise ValueError("step_size_grid must hold at least one positive step size")
        self.step_size_grid = tuple(sorted(grid))
        if step_size_rule not in ("acceptance", "elbo"):
            raise ValueError("step_size_rule must be 'acceptance' or 'elbo', "
                             f"got {step_size_rule!r}")
        self.step_size_rule = step_size_rule
        self.target_accept = positive_float("target_accept", target_accept)
        if not self.target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
        self.num_tune_samples = positive_int("num_tune_samples", num_tune_samples, 2)
        self.num_draws = positive_int("num_draws", num_draws, 2)
        self.reference_mc_samples = positive_int("reference_mc_samples", reference_mc_samples)
        self.map_steps = positive_int("map_steps", map_steps, 0)
        if isinstance(reference, str):
            if reference not in ("meanfield", "fullrank"):
                raise ValueError("reference must be 'meanfield', 'fullrank' or (loc, scale), "
                                 f"got {reference!r}")
        elif not (isinstance(reference, (tuple, list)) and len(reference) == 2):
            raise TypeError("reference must be 'meanfield', 'fullrank' or a (loc, scale) pair")
        self.reference = reference
        # Adam whose rate halves every 1000 steps (down to 1 %): fast start, then the iterate
        # settles instead of jittering around the optimum. The full-rank fit runs in whitened
        # coordinates from the Laplace fit and only corrects it: a smaller rate, halving every
        # 200 steps (gradient noise at a constant rate walks it away from a good start)
        full = self._full_rank()
        if reference_learning_rate == "auto":
            reference_learning_rate = 0.005 if full else 0.05
        lr = positive_float("reference_learning_rate", reference_learning_rate)
        self._flow_programs = {}   # `_compile_flow_programs`: input signature -> Background
        self.optimizer = optax.adam(optax.exponential_decay(lr, 200 if full else 1000, 0.5,
                                                            end_value=lr / 100))

    # -------------------------------------------------------------- reference fit as the loop
    def _full_rank(self) -> bool:
        if isinstance(self.reference, str):
            return self.reference == "fullrank"
        scale = self.reference[1]
        return not isinstance(scale, dict) and jnp.ndim(scale) == 2

    def _reference_arrays(self, bridge: ModelBridge, particles):
        if isinstance(self.reference, str):
            # AutoNormal's init_scale
            return particles, jnp.full(particles.shape, 0.1, particles.dtype)
        loc, scale = (bridge.flatten(v) if isinstance(v, dict) else jnp.asarray(v, particles.dtype)
                      for v in self.reference)
        d = bridge.dim
        if loc.shape != (d,) or jnp.shape(scale) not in ((), (d,), (d, d)):
            raise ValueError(f"reference (loc, scale) must have length {d} (the flat unconstrained "
                             f"dimension; scale may also be a ({d}, {d}) Cholesky factor), got "
                             f"{loc.shape} and {jnp.shape(scale)}")
        diag = jnp.diagonal(scale) if jnp.ndim(scale) == 2 else scale
        if not bool(jnp.all(jnp.isfinite(loc)) & jnp.all(diag > 0) & jnp.all(jnp.isfinite(scale))):
            raise ValueError("reference: loc must be finite and scale positive (a Cholesky "
                             "factor: positive diagonal)")
        if jnp.ndim(scale) == 2:
            if bool(jnp.any(jnp.triu(scale, 1) != 0)):
                raise ValueError("reference: a (d, d) scale must be a lower-triangular Cholesky "
                                 "factor (e.g. jnp.linalg.cholesky(cov)), got nonzeros above "
                                 "the diagonal")
            return loc[None], scale
        return loc[None], jnp.broadcast_to(scale, loc.shape)[None]

    @property
    def traceable_init(self) -> bool:
        # a named reference starts from the initial point (one compiled program); a given
        # (loc, scale) is checked on the host first
        return isinstance(self.reference, str)

    def _start(self, z, rng_key, target: Target, given: bool = False):
        self._compile_flow_programs(jnp.result_type(z), rng_key, target)
        return super()._start(z, rng_key, target, given)

    def _compile_flow_programs(self, dtype, rng_key, target: Target) -> None:
        """Lower the step-size grid's and the sampler's programs (``get_samples()``'s
        ``num_draws``) now, before the reference fit, and compile them in a background thread
        (`compilation.Background`) while this one traces, compiles and runs the fit: their
        input shapes follow from the model's dimension alone. Once per input signature."""
        st, dynamic = _split(target.bridge, target.model_args, target.model_kwargs)
        signature = split_static_args(target.model_args, target.model_kwargs)[3]
        try:
            key = (signature, str(dtype))
            if isinstance(st.static, _Unhashable) or key in self._flow_programs:
                return
        except TypeError:
            return
        d = target.bridge.dim
        vec, mat = jax.ShapeDtypeStruct((d,), dtype), jax.ShapeDtypeStruct((d, d), dtype)
        full = self._full_rank()
        params = MixFlowParams(vec, vec, vec, mat if full else None,
                               mat if full and self.step_scale == "reference" else None)
        N, L = self.flow_length, self.num_leapfrog
        lowered = []
        if self.step_size == "auto":
            # the reference fit's state as `_reference_fields` gives it
            row, rows = (jax.ShapeDtypeStruct((1, d), dtype),
                         jax.ShapeDtypeStruct((1, d, d), dtype))
            reference = (row, row) + ((rows, row, rows) if full else (None, None, None))
            cands = jax.ShapeDtypeStruct((len(self.step_size_grid),), dtype)
            # the same positional calls as `_result`'s (a static argument passed by keyword
            # instead would be another program)
            if self.step_size_rule == "elbo":
                lowered.append(_jit_tune_elbo.lower(rng_key, reference, cands, dynamic, st,
                                                    self.step_scale, N, L,
                                                    self.num_tune_samples))
            else:
                lowered.append(_jit_tune_acceptance.lower(rng_key, reference, cands, dynamic, st,
                                                          self.step_scale, L,
                                                          self.num_tune_samples))
        lowered.append(_jit_sample.lower(rng_key, params, dynamic, st, N, L, self.num_draws))
        self._flow_programs[key] = Background(lowered)

    def _pending(self, args, kwargs, dtype):
        """The background compilation `_compile_flow_programs` started for these inputs (or
        None)."""
        try:
            return self._flow_programs.get((split_static_args(args, kwargs)[3], str(dtype)))
        except TypeError:
            return None

    def _core_init(self, particles, rng_key, target: Target):
        loc, scale = self._reference_arrays(target.bridge, particles)
        if self.reference == "fullrank":   # traced (`traceable_init`)
            starts = spread_starts(loc[0], jax.random.fold_in(rng_key, 11), LAPLACE_STARTS)
            center, whiten = best_laplace(target.log_density, starts, self.map_steps)
            return reference_init(center, None, self.optimizer, rng_key, whiten=whiten)
        if self._full_rank():
            return reference_init(loc, None, self.optimizer, rng_key, whiten=scale)
        return reference_init(loc, scale, self.optimizer, rng_key)

    def _core_step(self, state, target):
        return reference_step(state, target.score_fn(), self.optimizer, self.reference_mc_samples)

    def _points(self, state):
        return reference_gaussian(state)[0][None]

    # -------------------------------------------------------------- the flow on the fit
    def _result(self, state, info, target: Target, rng_key) -> InferenceResult:
        bridge, args, kwargs = target.bridge, target.model_args, target.model_kwargs
        target, dynamic = _split(bridge, args, kwargs)
        reference = _reference_fields(state)
        pending = self._pending(args, kwargs, state.loc.dtype)
        stats = {}
        if self.step_size == "auto":
            # one program: the fitted reference's params (step_size = the unit the candidates
            # multiply) and each candidate's tuning number, from the run's key folded with
            # RESULT_KEY; compiled in the background (`_compile_flow_programs`)
            cands = np.asarray(self.step_size_grid, state.loc.dtype)
            if pending is not None:
                pending.wait(0)
            if self.step_size_rule == "elbo":
                (means, ses), params, finite = _jit_tune_elbo(
                    rng_key, reference, cands, dynamic, target, self.step_scale,
                    self.flow_length, self.num_leapfrog, self.num_tune_samples)
            else:
                (means, ses), params, finite = _jit_tune_acceptance(
                    rng_key, reference, cands, dynamic, target, self.step_scale,
                    self.num_leapfrog, self.num_tune_samples)
        else:
            params, finite = _jit_flow_params(reference, self.step_scale)
        if not bool(finite):
            raise FloatingPointError(
                f"MixFlow: the {'full-rank' if params.scale_tril is not None else 'mean-field'} "
                "reference fit is not finite (the model's density or its gradient is NaN/inf "
                "along the fit, or the Laplace mode search failed); check the model, or give "
                "reference=(loc, scale)")
        if self.step_size == "auto":
            means, ses = np.asarray(means), np.asarray(ses)
            if self.step_size_rule == "elbo":
                means = np.where(np.isfinite(means), means, -np.inf)
                best = int(np.argmax(means))
                if not np.isfinite(means[best]):
                    raise FloatingPointError(
                        "MixFlow: every candidate step size gave a non-finite ELBO; check the "
                        "model's density or give step_size_grid smaller steps")
            else:
                ok = np.flatnonzero(means >= self.target_accept)
                # the largest step whose leapfrog keeps the energy error small; if none does,
                # the smallest candidate
                best = int(ok[-1]) if ok.size else 0
            step = float(cands[best])
            stats["step_size_grid"] = {float(c): (float(m), float(s))
                                       for c, m, s in zip(cands, means, ses)}
        else:
            step = self.step_size
        # (NumPy on the host: no XLA program for an elementwise product)
        unit = np.asarray(params.step_size)
        params = params._replace(step_size=(step * unit).astype(unit.dtype))
        loc = params.loc

        # the result's other keys: the run's key folded with RESULT_KEY + 1 .. 3 by the one
        # compiled fold-in every engine shares, when first needed (a first call that draws
        # with its own key compiles none)
        def result_key(i):
            return fold_key(rng_key, RESULT_KEY + i)

        fit = MixFlowFit(params, self.flow_length, self.num_leapfrog, target, dynamic)
        flow = MixFlowResult(fit, pending)
        num_elbo = max(2, min(self.num_draws, 256))

        # the ELBOs and the inversion check compile and run the flow and its inverse (seconds
        # on a first call): computed when first read (the same numbers, from the same keys)
        def elbo():
            value, se = flow.elbo(result_key(1), num_elbo)
            return {"elbo": float(value), "elbo_se": float(se)}

        def reference_elbo():
            # the reference's ELBO by the same estimator (a flow of length 1 is q0 itself)
            value, se = _jit_elbo(result_key(1), params, dynamic, target, 1, 1, 4 * num_elbo)
            return {"reference_elbo": float(value), "reference_elbo_se": float(se)}

        def inversion_error():
            return {"inversion_error": float(jnp.max(
                flow.inversion_error(result_key(3), self.flow_length, 8)))}

        stats.update(step_size=step,
                     grad_evals=self._grad_evals(len(info.elbo), num_elbo, loc.shape[0]))
        stats = LazyStats(stats, [(("elbo", "elbo_se"), elbo),
                                  (("reference_elbo", "reference_elbo_se"), reference_elbo),
                                  (("inversion_error",), inversion_error)])
        return InferenceResult(
            type(self).__name__, bridge, args, kwargs,
            lambda n=self.num_draws: flow.sample(result_key(2), n).x, info._asdict(),
            state=state,
            objective=self.objective, sampler=lambda key, n: flow.sample(key, n).x,
            guide=latent_guide(bridge, _mixflow_latent(flow)), params={},
            log_q=flow.marginal_log_density, elbo_fn=flow.elbo, stats=stats, flow=flow,
            log_ratios=flow.log_ratios,
        )


    def _grad_evals(self, num_steps: int, num_elbo: int, dim: int) -> int:
        """Model-gradient evaluations of one ``run`` (a leapfrog step is one; maps reuse the
        last gradient): reference fit (with ``"fullrank"``: also the Laplace step, a
        Hessian-vector product counted as 2, a line-search density value as 1), step-size
        tuning, ELBO estimates, inversion check, and the draws (on average ``(N - 1) / 2`` maps
        each)."""
        N, L = self.flow_length, self.num_leapfrog
        trajectory = (2 * N - 1) * L + 1
        total = num_steps * self.reference_mc_samples
        if self.reference == "fullrank":
            # per start: Adam, Newton steps (a whitening = 2d HVPs, a gradient, 11 line-search
            # values) and the final whitening
            total += (1 + LAPLACE_STARTS) * (self.map_steps + NEWTON_STEPS * (4 * dim + 1 + 11)
                                             + 4 * dim)
        if self.step_size == "auto":
            per = trajectory if self.step_size_rule == "elbo" else L + 1
            total += len(self.step_size_grid) * self.num_tune_samples * per
        total += num_elbo * trajectory + 4 * num_elbo * (L + 1) + 8 * (2 * N * L + 1)
        total += self.num_draws * ((N - 1) * L // 2 + 1)
        return int(total)


class MixFlowResult:
    """A fitted MixFlow: the paper's three operations, compiled, vectorised over points."""

    def __init__(self, fit: MixFlowFit, pending=None):
        self.fit = fit
        self._pending = pending   # the sampler's program compiling in the background, if so

    @property
    def params(self) -> MixFlowParams:
        return self.fit.params

    def _args(self):
        f = self.fit
        return f.params, f.dynamic, f.target

    def sample(self, rng_key, num_samples: int) -> FlowPoint:
        """``num_samples`` i.i.d. draws (augmented points; ``.x`` is the unconstrained latent)."""
        params, dynamic, target = self._args()
        if self._pending is not None:
            self._pending.wait()
        return _jit_sample(rng_key, params, dynamic, target, self.fit.flow_length,
                           self.fit.num_leapfrog, positive_int("num_samples", num_samples))

    def log_density(self, x, rho, u) -> jax.Array:
        """log q_N at augmented points: ``x``, ``rho`` (n, d), ``u`` (n,) in [0, 1)."""
        params, dynamic, target = self._args()
        x = jnp.atleast_2d(jnp.asarray(x, params.loc.dtype))
        rho = jnp.atleast_2d(jnp.asarray(rho, params.loc.dtype))
        u = jnp.mod(jnp.atleast_1d(jnp.asarray(u, params.loc.dtype)), 1.0)
        return _jit_log_density(x, rho, u, params, dynamic, target, self.fit.flow_length,
                                self.fit.num_leapfrog)

    def marginal_log_density(self, x, rng_key=None, num_aux: int = 64) -> jax.Array:
        """log q_N(x) of the latent alone, by importance sampling over (rho, u) ~ m x U[0, 1):
        ``q_N(x) = E[q_N(x, rho, u) / m(rho)]``. Unbiased for the density (its log is biased
        low by about half the relative variance); ``num_aux`` draws per point."""
        params = self.params
        x = jnp.atleast_2d(jnp.asarray(x, params.loc.dtype))
        n, d = x.shape
        key = jax.random.key(0) if rng_key is None else rng_key
        k_rho, k_u = jax.random.split(key)
        rho = laplace_icdf(jax.random.uniform(k_rho, (n, num_aux, d), x.dtype, 1e-7, 1 - 1e-7))
        u = jax.random.uniform(k_u, (n, num_aux), x.dtype)
        xs = jnp.broadcast_to(x[:, None], (n, num_aux, d))
        lq = self.log_density(xs.reshape(-1, d), rho.reshape(-1, d), u.reshape(-1))
        lq = lq.reshape(n, num_aux) - log_laplace(rho)
        return jax.nn.logsumexp(lq, -1) - jnp.log(num_aux)

    def log_ratios(self, rng_key, num_samples: int):
        """Fresh draws ``x`` (n, d) and their importance log-ratios ``log pibar(z) - log q_N(z)``
        on the augmented space ``z = (x, rho, u)`` (whose ``x``-marginal of ``pibar`` is the
        posterior): one draw and one backward density pass per sample."""
        params, dynamic, target = self._args()
        return _jit_log_ratios(rng_key, params, dynamic, target, self.fit.flow_length,
                               self.fit.num_leapfrog, positive_int("num_samples", num_samples))

    def elbo(self, rng_key, num_samples: int = 256):
        """Unbiased ELBO estimate on the augmented space and its standard error."""
        params, dynamic, target = self._args()
        m, s = _jit_elbo(rng_key, params, dynamic, target, self.fit.flow_length,
                         self.fit.num_leapfrog, positive_int("num_samples", num_samples, 2))
        return m, s

    def inversion_error(self, rng_key, num_maps: int | None = None,
                        num_samples: int = 8) -> jax.Array:
        """Per draw z ~ q0: max |z - T^{-n} T^n z| with ``n = num_maps`` (default ``N``)."""
        params, dynamic, target = self._args()
        n = self.fit.flow_length if num_maps is None else positive_int("num_maps", num_maps)
        return _jit_inversion_error(rng_key, params, dynamic, target, n, self.fit.num_leapfrog,
                                    positive_int("num_samples", num_samples))


def _mixflow_latent(flow: MixFlowResult):
    """The guide's latent: a distribution whose draws come from the MixFlow's sampler."""

    class _MixFlowLatent(dist.Distribution):
        support = dist.constraints.real_vector

        def __init__(self, dim):
            super().__init__(batch_shape=(), event_shape=(dim,))

        def sample(self, key, sample_shape=()):
            n = int(np.prod(sample_shape)) if sample_shape else 1
            # the flow evaluates the model's density: keep those sites from the guide's trace
            with numpyro.handlers.block():
                x = flow.sample(key, n).x
            return x.reshape(tuple(sample_shape) + self.event_shape)

        def log_prob(self, value):
            raise NotImplementedError("the MixFlow's latent density is on the augmented space; "
                                      "use result.flow.log_density or result.log_q")

    return _MixFlowLatent


# ---------------------------------------------------------------------------- MCMC kernel
class MixFlowKernelState(NamedTuple):
    x: jax.Array
    rho: jax.Array
    u: jax.Array
    log_p: jax.Array
    grad: jax.Array
    rng_key: jax.Array


class MixFlowKernel(KernelAdapter):
    """The flow map as an MCMC kernel: ``init`` draws ``z0 ~ q0``, each ``sample`` applies ``T``.

    ``MCMC(MixFlowKernel(model, ...), num_warmup=W, num_samples=S, num_chains=4)`` gives
    trajectories ``T^n z0`` (uncorrected: the chain targets the MixFlow's ergodic average, not
    exactly the posterior). The reference and step size come from a `MixFlow` fit run once per
    model input shapes in ``init`` (``reference_steps`` steps, key ``reference_key``), or from
    ``fit=`` (a result of ``MixFlow.run``).
    """

    sample_field = "x"

    def __init__(self, model=None, *, fit: InferenceResult | None = None,
                 reference_steps: int = 2000, reference_key=None, **mixflow_kwargs):
        if model is None and fit is None:
            raise ValueError("MixFlowKernel needs a model or fit= (a MixFlow.run result)")
        if fit is not None and getattr(fit, "flow", None) is None:
            raise TypeError("fit must be the result of MixFlow.run")
        self._model = model if model is not None else fit.bridge.model
        self._fit = fit
        self.reference_steps = positive_int("reference_steps", reference_steps, 0)
        if reference_key is not None and not is_prng_key(reference_key):
            raise TypeError("reference_key must be None or a JAX PRNG key, e.g. jax.random.key(0), "
                            f"got {type(reference_key).__name__}")
        self.reference_key = jax.random.key(0) if reference_key is None else reference_key
        self._engine = MixFlow(self._model, **mixflow_kwargs)
        self._step = None

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):
        if init_params is not None and self._fit is None:
            # checked before the reference fit compiles and runs (the model is traced
            # abstractly; the fit below reuses that trace)
            bridge = compile_engine(self._engine, model_args, model_kwargs)[0].bridge
            bridge.check_params(init_params, batched=self._batched(rng_key))
        if self._fit is None:
            self._fit = self._engine.run(self.reference_key, self.reference_steps, *model_args,
                                         progress_bar=False, **model_kwargs)
        self._kernel_bridge = self._fit.bridge
        f = self._fit.flow.fit
        vg = f.target.value_and_grad(f.dynamic)

        def one(key, z=None):
            k_init, k_next = jax.random.split(key)
            p = sample_reference(k_init, f.params, vg)
            if z is not None:  # a given starting position, fresh momentum and auxiliary
                p = point(z, p.rho, p.u, vg)
            return MixFlowKernelState(*p, k_next)

        if init_params is not None:
            self._fit.bridge.check_params(init_params, batched=self._batched(rng_key))
        z = None if init_params is None else self._fit.bridge.flatten_batch(init_params) \
            if self._batched(rng_key) else self._fit.bridge.flatten(init_params)
        if self._batched(rng_key):
            return jax.vmap(one)(rng_key, z) if z is not None else jax.vmap(one)(rng_key)
        return one(rng_key, z)

    def sample(self, state, model_args, model_kwargs):
        f = self._fit.flow.fit
        vg = f.target.value_and_grad(f.dynamic)
        step = lambda q: flow_map(q, f.params, vg, f.num_leapfrog)[0]  # noqa: E731
        point = FlowPoint(*state[:5])
        # vectorized chains may reach here batched (one row per chain)
        p = jax.vmap(step)(point) if state.x.ndim > 1 else step(point)
        return MixFlowKernelState(*p, state.rng_key)
