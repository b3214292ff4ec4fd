"""The engine contract, and the two bases every engine is built on.

An engine binds a pure core (`numpyro_gflow.core`) to a NumPyro model. It is a small class
that supplies four hooks; everything else -- the bridge to the model, the compiled chunked
loop (`numpyro_gflow.engines.driver`), device placement and streamed batches
(`numpyro_gflow.engines.placement`), the NaN policy, Ctrl-C, checkpoints -- is shared:

* ``_core_init(z, rng_key, target) -> State``: the core's initial state from ``z`` (n, d),
  initial points in NumPyro's unconstrained space (``n = num_points``), called eagerly once per
  run. It must not write anything onto the engine: whatever a step needs goes into the state
  or is derived from ``target``.
* ``_core_step(state, target) -> (State, Info)``: one step, traced into the compiled loop;
  ``target`` (a `Target`) gives the model's log density, score and Hessian-vector products
  with the step's inputs (a mini-batch, when streaming).
* ``_result(state, info, target, rng_key) -> InferenceResult``: the result at the end.
* ``objective``: the ``Info`` field shown in the progress bar and checked for finiteness.

Bases: `ParticleEngine` (the state holds ``particles`` (n, d); the result is the particles;
each engine is also an ensemble ``MCMCKernel``) and `DensityEngine` (the state holds a fitted
density; the result has a guide, fresh draws, ``log_q`` and an ELBO; not an MCMC kernel).
"""

from __future__ import annotations

import abc
import functools
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.initialization import init_to_uniform
from numpyro.util import is_prng_key

from numpyro_gflow._validate import check_flag, positive_int
from numpyro_gflow.bridge import ModelBridge, split_static_args
from numpyro_gflow.compilation import SHORT, brief_jit
from numpyro_gflow.core.kernels import IMQKernel, Kernel, RBFKernel
from numpyro_gflow.core.numerics import Affine, best_laplace, spread_starts
from numpyro_gflow.core.optim import coin_restarts
from numpyro_gflow.engines import placement
from numpyro_gflow.engines.driver import (NonFiniteError, compile_engine, jit_on_target,
                                          run_chunks, shared_program)
from numpyro_gflow.engines.mcmc import EnsembleKernel
from numpyro_gflow.result import InferenceResult, with_stats

__all__ = [
    "DensityEngine",
    "Engine",
    "NonFiniteError",
    "ParticleEngine",
    "PreconditionedState",
    "Target",
]


#: extra uniform starts of the particle engines' Laplace mode search, and its Adam steps
LAPLACE_STARTS = 7
LAPLACE_MAP_STEPS = 200


class Target(NamedTuple):
    """The model bound to its inputs, as the hooks see it (inputs may be traced arrays)."""

    bridge: ModelBridge
    model_args: tuple
    model_kwargs: dict
    num_steps: int | None = None    # the run's length (None in MCMC kernel use)
    #: the engine's coordinates ``u`` (``z = coords.to_z(u)``; None: ``u = z``, NumPyro's
    #: unconstrained space): log density, score and Hessian-vector products are those in ``u``
    coords: Affine | None = None

    def log_density(self, z, rng_key=None):
        """Unnormalised log posterior at one flat point of the engine's coordinates (NumPyro's
        unconstrained space unless ``coords``; Jacobian included, up to a constant)."""
        if self.coords is not None:
            z = self.coords.shift + self.coords.scale @ z
        return self.bridge.log_density(z, self.model_args, self.model_kwargs, rng_key)

    def score_fn(self) -> Callable:
        """``(z (n, d), rng_key) -> (log_density (n,), score (n, d))``: what the cores take."""
        score = self.bridge.score_fn(self.model_args, self.model_kwargs)
        return score if self.coords is None else self.coords.score_fn(score)

    def hvp_fn(self) -> Callable:
        """``(x (d,), v (d,), rng_key) -> grad^2 V(x) v`` with ``V = -log p`` (about two
        gradients' cost; the same mini-batch for a given key)."""
        grad = jax.grad(lambda z, key: -self.log_density(z, key))
        return lambda x, v, key: jax.jvp(lambda y: grad(y, key), (x,), (v,))[1]

    def with_kwargs(self, extra: dict) -> "Target":
        """The same model with some keyword inputs replaced (a streamed batch)."""
        return self._replace(model_kwargs={**self.model_kwargs, **extra})


class PreconditionedState(NamedTuple):
    """A particle engine's state in its coordinates ``u`` (``z = coords.to_z(u)``):
    ``particles`` are in NumPyro's unconstrained space, ``core.particles`` in ``u``."""

    core: NamedTuple
    coords: Affine
    rng_key: jax.Array

    @property
    def particles(self):
        return _to_z(self.coords, self.core.particles)


class Engine(abc.ABC):
    """The contract of every engine (see the module docs for the hooks)."""

    #: name of the Info field that is the engine's objective (shown in the progress bar)
    objective: str = ""
    #: fewest steps ``run`` accepts (0 where the result is useful without any step)
    min_steps: int = 1
    #: whether a non-finite objective alone (state still finite) is recoverable, not a failure
    tolerates_non_finite_objective: bool = False
    #: whether ``run(data_loader=...)`` makes sense (engines needing the exact density: no)
    supports_streaming: bool = True
    #: whether `_init_state` traces under ``jax.jit`` (no host-side checks of values): then the
    #: initial state (Laplace mode search, curvature estimates) is one compiled program, cached
    #: with the engine's loop for its input signature, instead of eager op-by-op work each run
    traceable_init: bool = False
    #: `compilation.brief_jit` level of the step loop's program, where the loop is a small part
    #: of the engine's work (None: XLA's full optimisation)
    loop_level: int | None = None

    def __init__(self, model, *, init_strategy=init_to_uniform):
        if not callable(model):
            raise TypeError(f"model must be a callable NumPyro model, got {type(model).__name__}")
        self._model = model
        self.init_strategy = init_strategy
        self._compiled: dict = {}

    @property
    def model(self):
        return self._model

    # ------------------------------------------------------------------ hooks
    @property
    @abc.abstractmethod
    def num_points(self) -> int:
        """How many initial points ``init_strategy`` draws (particles, components, or 1)."""

    @abc.abstractmethod
    def _core_init(self, z: jax.Array, rng_key, target: Target):
        """The core's initial state from initial points ``z`` (num_points, d)."""

    @abc.abstractmethod
    def _core_step(self, state, target: Target):
        """One step: ``(state, Info)``; traced into the compiled loop."""

    @abc.abstractmethod
    def _result(self, state, info, target: Target, rng_key) -> InferenceResult:
        """The run's result from the final state and the per-step ``Info`` (stacked)."""

    def _check_target(self, target: Target) -> None:
        """Refuse a model this engine cannot run (raise ``ValueError`` naming the site), on
        the concrete inputs, once per input signature and before anything compiles."""

    def _init_state(self, z, rng_key, target: Target, given: bool = False):
        """The state a run starts from (``given``: ``z`` are the user's ``init_params``); the
        engines' `_core_init` unless a base adds something (`ParticleEngine`'s coordinates)."""
        return self._core_init(z, rng_key, target)

    def _step(self, state, target: Target):
        """One step of the run's state (what the driver traces): the engine's `_core_step`."""
        return self._core_step(state, target)

    def _shrink_step(self, state, factor):
        """``state`` with its step size multiplied by ``factor`` (a traced scalar), or None
        where the engine has no step size in its state. The driver retries a step that turned
        the state or objective non-finite with the step halved (`driver.MAX_BACKTRACKS`
        times at most) and keeps the smaller step."""
        return None

    def _step_acceptable(self, info):
        """A traced bool: whether a finite step is good enough to keep (None: every finite
        step is). With `_shrink_step`, a rejected step is retried with the step halved; one
        still rejected after the last halving is kept."""
        return None

    def _start(self, z, rng_key, target: Target, given: bool = False):
        """`_init_state`, compiled (and cached for the inputs' signature) where the engine's
        init is `traceable_init`; what ``run``, ``init_state`` and the MCMC adapter call."""
        extras = self._init_extras(z, rng_key, target)
        if not self.traceable_init:
            return self._init_state(z, rng_key, target, given, *extras)
        return self._compiled_program(
            ("init_state", bool(given), target.num_steps), target,
            lambda t, z, key, *xs: self._init_state(z, key, t, given, *xs), z, rng_key, *extras,
            level=SHORT)

    def _init_extras(self, z, rng_key, target: Target) -> tuple:
        """Arrays computed before `_init_state` by programs shared between engines (passed to
        it after ``given``); none by default."""
        return ()

    def _compiled_program(self, name, target: Target, fn: Callable, *arrays,
                          level: int | None = None):
        """``fn(target, *arrays)`` under ``jax.jit``, the compiled program kept with the
        engine's compiled loop for the target's input signature (so a second run on
        same-shaped inputs reuses it); ``name`` (hashable) must identify ``fn``, ``level`` and
        every Python value it closes over. The model's array inputs are traced, the rest
        static. ``level``: a program that runs once per fit (`compilation.brief_jit`)."""
        dynamic, static, treedef, signature = split_static_args(target.model_args,
                                                                target.model_kwargs)
        try:
            compiled = self._compiled.get(signature)
        except TypeError:   # unhashable static input: nothing is cached
            compiled = None
        store = (compiled.programs if compiled is not None and compiled.bridge is target.bridge
                 else {})
        program = store.get(name)
        if program is None:
            program = store[name] = jit_on_target(target, fn, static, treedef, level)
        return program(dynamic, *arrays)

    def _fallback_result(self, state, info, target: Target) -> InferenceResult:
        """The result of a run that stopped non-finite where `_result` cannot build one from
        its last finite state (e.g. a covariance whose Cholesky overflows)."""
        return InferenceResult(type(self).__name__, target.bridge, target.model_args,
                               target.model_kwargs, self._points(state), info._asdict(),
                               state=state, objective=self.objective)

    def _points(self, state) -> jax.Array:
        """The state's points in the unconstrained space: (n, d)."""
        return state.particles

    # coordinates: engines that move particles in another space (mirror maps) override these
    def _from_unconstrained(self, z, bridge: ModelBridge):
        return z

    def _to_unconstrained(self, particles, bridge: ModelBridge):
        return particles

    # ------------------------------------------------------------------ shared pieces
    def _initial_points(self, compiled, dynamic, keys, init_params):
        bridge = compiled.bridge
        if init_params is not None:
            bridge.check_params(init_params, batched=True)
            z = bridge.flatten_batch(init_params)
            if z.shape[0] != keys.shape[0]:
                raise ValueError(f"init_params has {z.shape[0]} rows, expected one per particle "
                                 f"({keys.shape[0]})")
            return z
        z, ok = compiled.init(keys, dynamic)
        if not np.all(np.asarray(ok)):
            args, kwargs = compiled.model_inputs(dynamic)
            bridge.check_finite(z[int(jnp.argmin(ok))], args, kwargs)
        return z

    @staticmethod
    def _state_key(keys):
        # the engine's own randomness (mini-batches), independent of the particles' init draws
        return _state_key(keys)

    def init_state(self, rng_key, *args, init_params=None, num_steps: int | None = None, **kwargs):
        """The state a ``run(rng_key, num_steps, *args, **kwargs)`` starts from (to inspect it,
        or to drive the core's ``step`` yourself)."""
        compiled, dynamic = compile_engine(self, args, kwargs)
        keys, state_key = _run_keys(rng_key, self.num_points)
        z = self._from_unconstrained(self._initial_points(compiled, dynamic, keys, init_params),
                                     compiled.bridge)
        return self._start(z, state_key,
                           Target(compiled.bridge, args, kwargs, num_steps),
                           given=init_params is not None)

    # ------------------------------------------------------------------ the engine API
    def run(self, rng_key, num_steps: int, *args, progress_bar: bool = True, init_params=None,
            init_state=None, devices="auto", shard_data: bool = False, data_loader=None,
            nan_policy: str = "raise", diagnose: bool | None = None,
            **kwargs) -> InferenceResult:
        """Run ``num_steps`` steps on ``model(*args, **kwargs)``.

        Args:
            rng_key: a JAX PRNG key; the same key gives the same result.
            num_steps: number of engine steps.
            progress_bar: show a tqdm bar (updated from inside the compiled loop).
            init_params: optional dict of unconstrained initial values, leading dim = particles
                (or components).
            init_state: continue from ``result.state`` of an earlier run on the same inputs.
            devices: where the particles (or mixture components) live. ``"auto"`` (default):
                split them across all visible devices (``jax.devices()``) when there are several
                and they divide the count evenly, else one device; ``None``: one device; a list
                of devices: split across those (the count must divide evenly). The split is a
                ``NamedSharding`` over a 1-d mesh axis ``"particles"``: every state array whose
                leading axis is the particle axis is sharded along it, the rest replicated, and
                XLA partitions the compiled loop (the all-pairs kernel sums gather the
                particles). Same results as one device up to float reordering of the sums, as
                amplified by the dynamics (measured on 4 CPU devices: SVGD particles within
                2e-5 after 300 converging steps; a run whose particles keep oscillating
                amplifies any 1e-7 change, reordering included, to O(0.1)). Multi-host: call
                ``jax.distributed.initialize()`` first and pass ``jax.devices()`` (all hosts'
                devices); the same code runs.
            shard_data: split the model's data across the devices instead of the particles
                (for data-heavy models with few particles): every array input whose leading
                axis is the size of one of the model's plates (and divides evenly) is sharded
                by rows over a 1-d mesh axis ``"data"``, the engine state is replicated, and
                XLA partitions the likelihood (each device sums its rows, then one all-reduce).
                Streamed batches are split the same way. Needs several devices (``devices``).
            data_loader: a `StreamedData`: mini-batches streamed from host memory, passed to
                the model as keyword arguments (one batch per step; see `numpyro_gflow.data`).
                The model's plate of size ``data_loader.num_rows`` with ``subsample_size ==
                data_loader.batch_size`` rescales the batch's log-likelihood. The batches are a
                function of ``rng_key`` and the step number; a run resumed with
                ``init_state`` starts its batch sequence afresh (give it another key).
            nan_policy: what a step that makes the state or the objective non-finite does.
                The loop notices it inside the compiled code and freezes at the last finite
                state (no per-step host sync); then ``"raise"`` (default) raises
                `NonFiniteError` naming the step, with the partial result as its ``.result``;
                ``"stop"`` returns that partial result, ``result.status`` naming the step.
            diagnose: check the result (``result.diagnose()``: finite points, a complete run,
                a settled objective, PSIS Pareto k_hat for density engines, a KSD test for
                particle engines; `numpyro_gflow.diagnose`) and warn with
                `UnreliableResultWarning` naming the failed checks. ``False`` skips them (the
                checks cost a few draws and density evaluations; ``result.diagnostics`` is
                then ``None``). ``None`` (default): ``numpyro_gflow.diagnose.ON_RUN`` (True
                unless changed).

        The loop runs in up to 10 compiled chunks of equal length, at least 100 steps each (one
        compilation): Ctrl-C (KeyboardInterrupt) during a run returns the result at the end of
        the last finished chunk, with ``result.status`` saying so. Continue with
        ``init_state=result.state``: ``k`` steps then ``m`` more equal ``k + m`` steps bit for
        bit. ``result.status`` is ``"ok"`` for a complete run.
        """
        num_steps = positive_int("num_steps", num_steps, self.min_steps)
        if not is_prng_key(rng_key):
            raise TypeError("rng_key must be a JAX PRNG key, e.g. jax.random.key(0)")
        self._check_ready()
        if nan_policy not in ("raise", "stop"):
            raise ValueError(f"nan_policy must be 'raise' or 'stop', got {nan_policy!r}")
        if diagnose is None:
            from numpyro_gflow import diagnose as _diagnose

            diagnose = _diagnose.ON_RUN
        check_flag("diagnose", diagnose)
        stream = self._check_loader(data_loader, kwargs)
        if stream is not None:
            kwargs = {**kwargs, **stream.first_batch()}
        compiled, dynamic = compile_engine(self, args, kwargs, stream)
        mesh = placement.data_mesh(devices) if shard_data else None
        if mesh is not None:
            dynamic = placement.shard_rows(dynamic, compiled.bridge.plate_sizes.values(), mesh)
        if init_state is None:
            keys, state_key = _run_keys(rng_key, self.num_points)
            z = self._initial_points(compiled, dynamic, keys, init_params)
            z = self._from_unconstrained(z, compiled.bridge)
            init_state = self._start(z, state_key,
                                     Target(compiled.bridge, args, kwargs, num_steps),
                                     given=init_params is not None)
        init_state = (placement.place_points(init_state, self.num_points, devices) if mesh is None
                      else jax.device_put(init_state, placement.replicated(mesh)))
        feed = None
        if stream is not None:
            seed = int(jax.random.randint(jax.random.fold_in(rng_key, 0x5D), (), 0, 2 ** 31 - 1))
            feed = placement.BatchFeed(stream, seed, mesh)
        state, info, done, failed_at, interrupted, backtracks = run_chunks(
            self, compiled, dynamic, init_state, num_steps, progress_bar, feed)
        steps_kept = done if failed_at == 0 else failed_at - 1
        info = jax.tree.map(lambda x: x[:steps_kept], info)
        target = Target(compiled.bridge, args, kwargs, num_steps)
        try:
            result = self._result(state, info, target, rng_key)
        except Exception:  # noqa: BLE001
            if not failed_at:
                raise
            result = self._fallback_result(state, info, target)
        result.num_steps = steps_kept
        # (abstractly: the multiplication would compile a program of its own)
        if jax.eval_shape(lambda s: self._shrink_step(s, 1.0), init_state) is not None:
            # steps that turned non-finite and were retried with the step halved (driver)
            result.stats = with_stats(result.stats, backtracks=backtracks)
        coins = coin_restarts(state)
        if coins is not None:
            restarts, last = coins
            result.stats = with_stats(result.stats, coin_restarts=restarts,
                                      coin_restarts_last=last)
            # with the checks on, diagnose's coin_restarts check says it (one warning)
            if last and not failed_at and not interrupted and not diagnose:
                warnings.warn(
                    f"{type(self).__name__}: coin betting's guard restarted {last} of "
                    f"{self.num_points} particles at the last step ({restarts} restarts in the "
                    "run): their directions are non-finite, so they are sent back to their "
                    "start instead of moving, and the result does not describe the posterior. "
                    "Check the model's density at the initial points (a finite but absurd "
                    "value, e.g. -1e30), or use precondition='laplace' where the engine takes "
                    "it.", UserWarning, stacklevel=2)
        if failed_at:
            result.status = (f"stopped: non-finite state or objective at step {failed_at} of "
                             f"{num_steps}; the state and trace are those after step "
                             f"{failed_at - 1}")
            if nan_policy == "raise":
                raise NonFiniteError(f"{type(self).__name__}: {result.status} "
                                     "(lower the step size, or run(..., nan_policy='stop') "
                                     "to get the partial result)",
                                     result)
        elif interrupted:
            result.status = f"interrupted after step {done} of {num_steps}"
        result.streamed = stream is not None
        if stream is not None or compiled.bridge.subsample_plates:
            result.minibatch_note = self._minibatch_note()
        if diagnose:
            report = result.diagnose(fold_key(rng_key, 0xD1A6))
            if not report["ok"]:
                from numpyro_gflow.diagnose import UnreliableResultWarning

                warnings.warn(
                    f"{type(self).__name__}: the result failed its checks "
                    f"({', '.join(report['failed'])}): "
                    + " | ".join(report["messages"].values())
                    + " (result.diagnose() has the values; run(..., diagnose=False) skips "
                    "the checks)", UnreliableResultWarning, stacklevel=2)
        return result

    def _check_ready(self):
        """Anything ``run`` needs that the constructor could leave open."""

    def _minibatch_note(self) -> str | None:
        """What is wrong with this engine's settings on mini-batch gradients (a subsampled
        plate or streamed data), e.g. a step that never decays, so the batch noise never
        averages out; None where nothing is known to be. Diagnose's ``minibatch`` check
        reports it."""
        return None

    def _check_loader(self, data_loader, kwargs):
        from numpyro_gflow.data import StreamedData

        if data_loader is None:
            return None
        if not self.supports_streaming:
            raise ValueError(f"{type(self).__name__} does not take a data_loader: it needs the "
                             "model's exact log density (all rows) at every step")
        if not isinstance(data_loader, StreamedData):
            raise TypeError("data_loader must be a numpyro_gflow.StreamedData, "
                            f"got {type(data_loader).__name__}")
        clash = sorted(set(data_loader.names) & set(kwargs))
        if clash:
            raise TypeError(f"model keyword argument(s) {clash} are given both directly and by the "
                            "data_loader; pass each once")
        return data_loader


class ParticleEngine(EnsembleKernel, Engine):
    """Base of the particle engines: the state's ``particles`` (n, d) are the result, and the
    engine is also an ensemble ``MCMCKernel`` (`numpyro_gflow.engines.mcmc`)."""

    #: fewest particles that make sense
    min_particles: int = 2
    #: whether the engine can run in `precondition="laplace"` coordinates (the mirrored engines
    #: move in their own dual coordinates, CoinLAWGD on its own grid: no)
    supports_precondition: bool = True
    #: the values ``precondition=`` takes
    precondition_choices: tuple = ("laplace", None)
    #: the kernel given to the engine, or None: `kernel_for` picks it per run
    kernel: Kernel | None = None
    #: the kernel of the engine's paper: the default where the particles move in NumPyro's
    #: own coordinates (``precondition=None``)
    paper_kernel: Kernel = RBFKernel()

    def __init__(self, model, *, num_particles: int | None = 100, init_strategy=init_to_uniform,
                 precondition: str | None = None):
        super().__init__(model, init_strategy=init_strategy)
        self.num_particles = (None if num_particles is None
                              else positive_int("num_particles", num_particles, self.min_particles))
        if precondition not in self.precondition_choices:
            choices = " or ".join(repr(c) for c in self.precondition_choices)
            raise ValueError(f"precondition must be {choices}, got {precondition!r}")
        if precondition is not None and not self.supports_precondition:
            raise ValueError(f"{type(self).__name__} does not take precondition=")
        self.precondition = precondition

    def _init_extras(self, z, rng_key, target: Target) -> tuple:
        """The Laplace mode and factor (``precondition="laplace"``), by a compiled program
        shared with every particle engine on the same model, inputs and coordinates
        (`driver.shared_program`): SVGD, KSD descent, the coin engines and SVNG find the same
        mode, so it is compiled once per model, not once per engine."""
        if self._resolved_precondition(target) is None:
            return ()
        name = ("laplace", self._coordinates_kind(), LAPLACE_MAP_STEPS, LAPLACE_STARTS)

        def laplace(t, z, key):
            starts = spread_starts(z[0], jax.random.fold_in(key, 11), LAPLACE_STARTS)
            return best_laplace(self._particle_log_density(t), starts, LAPLACE_MAP_STEPS)

        # the first point only (on the host: no program of its own), so that engines with
        # different numbers of particles share one compiled program
        first = np.asarray(z)[:1]
        shared = shared_program(self, target, name, laplace, SHORT)
        if shared is None:    # kept with this engine's programs instead
            return tuple(self._compiled_program(name, target, laplace, first, rng_key,
                                                level=SHORT))
        return tuple(shared(first, rng_key))

    def _coordinates_kind(self):
        """What `_particle_log_density` depends on besides the model (hashable): engines
        whose coordinates agree share their Laplace program."""
        return "unconstrained"

    def _init_state(self, z, rng_key, target: Target, given: bool = False, mode=None,
                    whiten=None):
        """With ``precondition="laplace"``: the particles move in ``u`` with ``z = mode + W u``,
        ``W W^T`` the inverse Hessian at the highest of the Laplace modes found from the init
        point and `LAPLACE_STARTS` uniform starts (`numerics.best_laplace`, `_init_extras`);
        they start uniform in ``(-2, 2)`` there (about +-2 posterior sds around the mode on a
        Gaussian-like posterior), or at the given ``init_params``."""
        if self._resolved_precondition(target) is None:
            return self._core_init(z, rng_key, target)
        coords = Affine.of(mode, whiten)
        if given:
            u = jnp.linalg.solve(whiten, (z - mode).T).T
        else:
            u = jax.random.uniform(jax.random.fold_in(rng_key, 12), z.shape, z.dtype, -2.0, 2.0)
        core = self._core_init(u, rng_key, target._replace(coords=coords))
        return PreconditionedState(core, coords, getattr(core, "rng_key", rng_key))

    def _resolved_precondition(self, target: Target) -> str | None:
        """``precondition`` for this target (an engine with an ``"auto"`` choice decides here)."""
        return self.precondition

    @staticmethod
    def _checked_kernel(kernel) -> Kernel | None:
        """``kernel=`` as given (None: `kernel_for` picks one), checked."""
        if kernel is not None and not isinstance(kernel, (RBFKernel, IMQKernel)):
            raise TypeError("kernel must be an RBFKernel or IMQKernel, "
                            f"got {type(kernel).__name__}")
        return kernel

    def kernel_for(self, dim: int, whitened: bool | None = None) -> Kernel:
        """The kernel of a run whose particles have ``dim`` coordinates: the one given, else
        an RBF kernel of fixed bandwidth ``2 * dim`` where the particles move in the
        Laplace-whitened coordinates (``whitened``; None: ``precondition == "laplace"``),
        else the engine's `paper_kernel` (the median heuristic for the SVGD family).

        Why not the median there: in the whitened coordinates two posterior draws are about
        ``2 d`` apart in squared distance, whatever the model; the median heuristic instead
        reads ``h`` off the particles' own distances, which shrink as SVGD's particles
        collapse (its known variance underestimation), and the collapse feeds on itself.
        Measured on posteriordb (2000 steps, 100 particles, seed 0; docs/posteriordb.md):
        SVGD within NUTS accuracy (means 0.1 sd, sds 10 %) on 11 of the 13 posteriors with
        ``2 d``, 0 of 13 with the median (e.g. kidiq 0.059 sd / 17 % -> 0.024 / 1.2 %,
        Lotka-Volterra 0.26 / 36 % -> 0.07 / 9 %); the other Stein engines gain alike
        (CoinSVGD on mesquite 0.28 / 32 % -> 0.05 / 10 %). Eight schools (a funnel, no useful
        Laplace coordinates) stays far off either way."""
        if self.kernel is not None:
            return self.kernel
        if whitened is None:
            whitened = self.precondition == "laplace"
        return RBFKernel(bandwidth=2.0 * dim) if whitened else self.paper_kernel

    def _step_kernel(self, particles, target: Target) -> Kernel:
        """`kernel_for` the particles of a step (traced): whitened when ``target.coords``."""
        return self.kernel_for(particles.shape[-1], target.coords is not None)

    def _particle_log_density(self, target: Target) -> Callable:
        """The log density of one point in the particles' own coordinates (NumPyro's
        unconstrained space; the mirrored engines' dual space)."""
        return target.log_density

    def _step(self, state, target: Target):
        if not isinstance(state, PreconditionedState):
            return self._core_step(state, target)
        core = state.core
        if hasattr(core, "rng_key"):     # MCMC may have replaced the outer key
            core = core._replace(rng_key=state.rng_key)
        core, info = self._core_step(core, target._replace(coords=state.coords))
        return state._replace(core=core, rng_key=getattr(core, "rng_key", state.rng_key)), info

    @property
    def num_points(self) -> int:
        return self.num_particles

    def _check_ready(self):
        if self.num_particles is None:
            raise ValueError("num_particles is required for run() (MCMC takes it from num_chains)")

    def _points(self, state):
        return state.particles

    def _result(self, state, info, target: Target, rng_key) -> InferenceResult:
        """The particles, in NumPyro's unconstrained space, are the result."""
        return InferenceResult(
            type(self).__name__, target.bridge, target.model_args, target.model_kwargs,
            self._result_points(state, target.bridge),
            info._asdict(), state=state, objective=self.objective,
        )

    def _result_points(self, state, bridge):
        """The particles of ``state`` in NumPyro's unconstrained space (n, d)."""
        return self._to_unconstrained(state.particles, bridge)

    def _fallback_result(self, state, info, target):
        return ParticleEngine._result(self, state, info, target, None)


class DensityEngine(Engine):
    """Base of the engines that fit a density (a Gaussian, a mixture, a flow): the result has a
    NumPyro guide, fresh draws (``get_samples(num_samples, rng_key)``), ``log_q`` and an ELBO.
    Not an MCMC kernel: ``MCMC(engine, ...)`` raises ``TypeError`` (call ``run``)."""

    #: draws made at the end of the run (``result.get_samples()`` without arguments)
    num_result_draws: int = 1000

    @property
    def num_points(self) -> int:
        return 1

    @property
    def sample_field(self):
        # the first thing numpyro.infer.MCMC reads of its kernel
        raise TypeError(
            f"{type(self).__name__} fits a density; it is not an MCMC kernel. Call "
            f"{type(self).__name__}(model).run(rng_key, num_steps, *args) and draw with "
            "result.get_samples(num_samples, rng_key)")

    def _density_result(self, state, info, target: Target, rng_key, *, fit: Callable,
                        sample: Callable, log_q: Callable, latent: Callable,
                        guide_params: tuple[str, ...]) -> InferenceResult:
        """The result of a fitted density, from pure functions (module-level, so each is
        compiled once per process and shapes, not once per run): ``fit(state) -> dict`` of the
        fitted arrays; ``sample(fitted, key, n) -> (n, d)`` unconstrained draws; ``log_q(fitted,
        z)`` at such points; the guide's ``latent(dim)`` (declares ``numpyro.param`` sites named
        as ``guide_params``, keys of ``fitted``, and returns a distribution over the flat
        latent vector)."""
        from numpyro_gflow.result import latent_guide

        fitted = _jitted(fit)(state)
        draw, density = _jitted(sample, 2), _jitted(log_q)
        draws = draw(fitted, fold_key(rng_key, 1), self.num_result_draws)
        return InferenceResult(
            type(self).__name__, target.bridge, target.model_args, target.model_kwargs, draws,
            info._asdict(), state=state, objective=self.objective,
            sampler=lambda key, n: draw(fitted, key, n), log_q=lambda z: density(fitted, z),
            guide=latent_guide(target.bridge, latent),
            params={k: fitted[k] for k in guide_params},
        )


@brief_jit(static_argnums=1)
def _run_keys(rng_key, num_points):
    """One key per point (its initial draw) and the engine's own key (mini-batches, the core's
    randomness), in one compiled program."""
    keys = jax.random.split(rng_key, num_points)
    return keys, _state_key(keys)


@brief_jit
def _state_key(keys):
    return jax.random.fold_in(keys[0], 0x6F1)


@brief_jit
def _to_z(coords, u):
    return coords.to_z(u)


@brief_jit
def fold_key(rng_key, data):
    """``jax.random.fold_in``, compiled once (run op by op it compiles two programs per call
    site's first use)."""
    return jax.random.fold_in(rng_key, data)


@functools.cache
def _jitted(fn, static_argnums=()):
    return jax.jit(fn, static_argnums=static_argnums)
