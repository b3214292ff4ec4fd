"""The NumPyro-facing shell shared by the particle engines.

A particle engine is two things at once:

* an engine: ``Engine(model, ...).run(rng_key, num_steps, *args, **kwargs)`` returns an
  `InferenceResult`; the whole loop is one compiled ``lax.scan``,
  compiled once per input shapes and reused by later runs;
* an ensemble `numpyro.infer.mcmc.MCMCKernel` (like ``numpyro.infer.AIES``): with
  ``MCMC(engine, num_warmup=W, num_samples=S, num_chains=n, chain_method="vectorized")`` each
  chain is a particle and each MCMC step is one engine step. For the same key, the particles
  after ``W + S`` MCMC steps are those of ``run(key, W + S)``.

A subclass supplies the pure core: ``_core_init(particles, rng_key, target) -> State`` and
``_core_step(state, score_fn) -> (State, Info)``. Core states are NamedTuples with
``particles`` (n, d) and ``rng_key`` fields; ``Info`` is a NamedTuple of scalars traced per
step, whose field named by ``objective`` is the engine's objective.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from numpyro_gflow import progress
from numpyro_gflow._validate import positive_int
from numpyro_gflow.bridge import ModelBridge, merge_static_args, split_static_args
from numpyro_gflow.result import InferenceResult

__all__ = ["ParticleEngine", "Target", "NonFiniteError"]

#: the loop runs in up to this many compiled chunks (between them: Ctrl-C, early stop) ...
CHUNKS = 10
#: ... of at least this many steps (each chunk costs a dispatch and a sync: measured ~30 ms on
#: a 1e5-row model, where 10 chunks of one step doubled a 10-step run)
MIN_CHUNK_STEPS = 100


class NonFiniteError(FloatingPointError):
    """A run produced a non-finite state or objective; ``.result`` holds the run up to the last
    finite step (its ``status`` names the step)."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)


def _rows(mesh, axis: int = 0):
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(*([None] * axis), "data"))


def _replicated(mesh):
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec())


class _BatchFeed:
    """Streamed batches for chunks of steps, on the device (row-sharded over ``mesh`` if given)."""

    def __init__(self, stream, seed: int, mesh=None):
        self.stream, self.seed, self.mesh = stream, seed, mesh

    def __call__(self, start: int, num_steps: int) -> dict:
        host = self.stream.batches(self.seed, start, num_steps)
        if self.mesh is None:
            return jax.device_put(host)
        n = self.mesh.devices.size
        return {k: jax.device_put(v, _rows(self.mesh, 1) if v.shape[1] % n == 0 else _replicated(self.mesh))
                for k, v in host.items()}

    def shapes(self, num_steps: int) -> dict:
        return {k: jax.ShapeDtypeStruct((num_steps, self.stream.batch_size) + a.shape[1:], a.dtype)
                for k, a in self.stream.arrays.items()}


class Target(NamedTuple):
    """What an engine's ``_core_init`` may need beyond the particles: the model and its inputs."""

    bridge: ModelBridge
    model_args: tuple
    model_kwargs: dict
    num_steps: int | None = None    # the run's length (None in MCMC kernel use)


class _Compiled(NamedTuple):
    bridge: ModelBridge
    init: Callable
    run: Callable
    static: tuple
    treedef: object


class ParticleEngine(MCMCKernel):
    #: name of the Info field that is the engine's objective (shown in the progress bar)
    objective: str = ""

    #: fewest particles that make sense (a single Gaussian component is a valid mixture)
    min_particles: int = 2

    #: fewest steps ``run`` accepts (0 where the result is useful without any step)
    min_steps: int = 1

    #: whether a non-finite objective alone (state still finite) is recoverable, not a failure
    tolerates_non_finite_objective: bool = False

    #: whether ``run(data_loader=...)`` makes sense (engines needing the exact density: no)
    supports_streaming: bool = True

    def __init__(self, model, *, num_particles: int | None = 100, init_strategy=init_to_uniform):
        if not callable(model):
            raise TypeError(f"model must be a callable NumPyro model, got {type(model).__name__}")
        self._model = model
        self.num_particles = None if num_particles is None else positive_int("num_particles", num_particles, self.min_particles)
        self.init_strategy = init_strategy
        self._compiled: dict = {}
        self._kernel_bridge: ModelBridge | None = None

    # ------------------------------------------------------------------ subclass hooks
    def _core_init(self, particles: jax.Array, rng_key, target: Target):
        raise NotImplementedError

    def _core_step(self, state, score_fn: Callable):
        raise NotImplementedError

    # coordinates: engines that move particles in another space (mirror maps) override these
    def _make_score_fn(self, bridge: ModelBridge, args, kwargs) -> Callable:
        return bridge.score_fn(args, kwargs)

    def _from_unconstrained(self, z, bridge: ModelBridge):
        return z

    def _to_unconstrained(self, particles, bridge: ModelBridge):
        return particles

    def _constrain_one(self, bridge: ModelBridge, particle, args, kwargs):
        return bridge.constrain(particle, args, kwargs)

    # ------------------------------------------------------------------ compilation cache
    def _prepare(self, args, kwargs, stream=None) -> tuple[_Compiled, list]:
        """Bridge and compiled init/run for these input shapes (built once, then reused).
        ``stream``: a `StreamedData` whose first batch is in ``kwargs``."""
        dynamic, static, treedef, signature = split_static_args(args, kwargs)
        if stream is not None:
            signature = (signature, "streamed", stream.num_rows, stream.batch_size, stream.names)
        try:
            cached = self._compiled.get(signature)
        except TypeError:  # unhashable static input: no cache
            signature, cached = None, None
        if cached is not None:
            return cached, dynamic
        bridge = ModelBridge.from_model(self._model, *args, **kwargs)
        if stream is not None:
            bridge = bridge.with_streamed_plate(stream.num_rows, stream.batch_size)

        def model_inputs(dyn):
            return merge_static_args(dyn, static, treedef)

        def init_fn(keys, dyn):
            a, kw = model_inputs(dyn)
            return bridge.init_particles(keys, a, kw, self.init_strategy)

        def run_fn(carry, dyn, batches, bar_id, start, total, num_steps, every):
            # one chunk of ``num_steps`` steps from global step ``start``; steps at or past
            # ``total`` are skipped (so every chunk has one length: one compilation). The carry
            # holds the last state whose floats were all finite and the 1-based step at which
            # the engine first produced a non-finite state or objective (0: none): after that
            # step nothing moves (no host sync needed to stop). ``batches``: None, or streamed
            # model keyword arrays with a leading axis of ``num_steps`` (one batch per step)
            a, kw = model_inputs(dyn)
            score_fn = self._make_score_fn(bridge, a, kw)

            def body(carry, xs):
                i, batch = xs
                state, failed_at = carry
                step = (start + i + 1).astype(jnp.int32)
                step_score_fn = score_fn if batch is None else self._make_score_fn(bridge, a, {**kw, **batch})
                new, info = self._core_step(state, step_score_fn)
                ok = _all_finite(new)
                if self.objective and not self.tolerates_non_finite_objective:
                    ok = ok & jnp.all(jnp.isfinite(getattr(info, self.objective)))
                active = step <= total
                failed_at = jnp.where(active & (failed_at == 0) & ~ok, step, failed_at)
                keep = active & (failed_at == 0)
                state = lax.cond(keep, lambda: new, lambda: state)
                progress.tick(bar_id, step, getattr(info, self.objective) if self.objective else 0.0,
                              every)
                return (state, failed_at), info

            return lax.scan(body, carry, (jnp.arange(num_steps, dtype=jnp.int32), batches))

        compiled = _Compiled(bridge, jax.jit(init_fn),
                             jax.jit(run_fn, static_argnames=("num_steps", "every")),
                             static, treedef)
        if signature is not None:
            self._compiled[signature] = compiled
        return compiled, dynamic

    def _initial_particles(self, compiled: _Compiled, dynamic, keys, init_params):
        bridge = compiled.bridge
        if init_params is not None:
            z = bridge.flatten_batch(init_params)
            if z.shape[0] != keys.shape[0]:
                raise ValueError(f"init_params has {z.shape[0]} rows, expected one per particle ({keys.shape[0]})")
            return z
        z, ok = compiled.init(keys, dynamic)
        if not bool(jnp.all(ok)):
            args, kwargs = merge_static_args(dynamic, compiled.static, compiled.treedef)
            bridge.check_finite(z[int(jnp.argmin(ok))], args, kwargs)
        return z

    @staticmethod
    def _state_key(keys):
        # the engine's own randomness (mini-batches), independent of the particles' init draws
        return jax.random.fold_in(keys[0], 0x6F1)

    # ------------------------------------------------------------------ engine API
    def run(self, rng_key, num_steps: int, *args, progress_bar: bool = True, init_params=None,
            init_state=None, devices="auto", shard_data: bool = False, data_loader=None,
            nan_policy: str = "raise", **kwargs) -> InferenceResult:
        """Run ``num_steps`` steps on ``model(*args, **kwargs)``.

        Args:
            rng_key: a JAX PRNG key; the same key gives the same result.
            num_steps: number of engine steps.
            progress_bar: show a tqdm bar (updated from inside the compiled loop).
            init_params: optional dict of unconstrained initial values, leading dim = particles.
            init_state: continue from ``result.state`` of an earlier run on the same inputs.
            devices: where the particles live. ``"auto"`` (default): split them across all
                visible devices (``jax.devices()``) when there are several and they divide
                the particle count evenly, else one device; ``None``: one device; a list of
                devices: split across those (the particle count must divide evenly). The
                split is a ``NamedSharding`` over a 1-d mesh axis ``"particles"``: every state
                array whose leading axis is the particle axis is sharded along it, the rest
                replicated, and XLA partitions the compiled loop (the all-pairs kernel sums
                gather the particles). Same results as one device up to float reordering of
                the sums, as amplified by the dynamics (measured on 4 CPU devices: SVGD
                particles within 2e-5 after 300 converging steps; a run whose particles keep
                oscillating amplifies any 1e-7 change, reordering included, to O(0.1)).
                Multi-host: call ``jax.distributed.initialize()`` first and pass
                ``jax.devices()`` (all hosts' devices); the same code runs.
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

        The loop runs in up to 10 compiled chunks of equal length, at least 100 steps each (one
        compilation): Ctrl-C (KeyboardInterrupt) during a run returns the result at the end of
        the last finished chunk, with ``result.status`` saying so. Continue with ``init_state=result.state``:
        ``k`` steps then ``m`` more equal ``k + m`` steps bit for bit. ``result.status`` is
        ``"ok"`` for a complete run.
        """
        num_steps = positive_int("num_steps", num_steps, self.min_steps)
        if not is_prng_key(rng_key):
            raise TypeError("rng_key must be a JAX PRNG key, e.g. jax.random.key(0)")
        if self.num_particles is None:
            raise ValueError("num_particles is required for run() (MCMC takes it from num_chains)")
        stream = self._check_loader(data_loader, kwargs)
        if stream is not None:
            kwargs = {**kwargs, **stream.first_batch()}
        compiled, dynamic = self._prepare(args, kwargs, stream)
        mesh = self._data_mesh(devices) if shard_data else None
        if mesh is not None:
            dynamic = self._shard_rows(dynamic, compiled.bridge, mesh)
        if init_state is None:
            keys = jax.random.split(rng_key, self.num_particles)
            z = self._initial_particles(compiled, dynamic, keys, init_params)
            z = self._from_unconstrained(z, compiled.bridge)
            init_state = self._core_init(z, self._state_key(keys),
                                         Target(compiled.bridge, args, kwargs, num_steps))
        init_state = (self._place(init_state, devices) if mesh is None
                      else jax.device_put(init_state, _replicated(mesh)))
        if nan_policy not in ("raise", "stop"):
            raise ValueError(f"nan_policy must be 'raise' or 'stop', got {nan_policy!r}")
        feed = None
        if stream is not None:
            seed = int(jax.random.randint(jax.random.fold_in(rng_key, 0x5D), (), 0, 2 ** 31 - 1))
            feed = _BatchFeed(stream, seed, mesh)
        state, info, done, failed_at, interrupted = self._run_chunks(
            compiled, dynamic, init_state, num_steps, progress_bar, feed)
        steps_kept = done if failed_at == 0 else failed_at - 1
        info = jax.tree.map(lambda x: x[:steps_kept], info)
        try:
            result = self._result(state, info, compiled.bridge, args, kwargs, rng_key)
        except Exception:  # noqa: BLE001
            if not failed_at:
                raise
            # the last finite state of a diverging run may be too extreme for the engine's own
            # result (a covariance whose Cholesky overflows): keep its particles
            result = ParticleEngine._result(self, state, info, compiled.bridge, args, kwargs, rng_key)
        result.num_steps = steps_kept
        if failed_at:
            result.status = (f"stopped: non-finite state or objective at step {failed_at} of "
                             f"{num_steps}; the state and trace are those after step {failed_at - 1}")
            if nan_policy == "raise":
                raise NonFiniteError(f"{type(self).__name__}: {result.status} (lower the step size, "
                                     "or run(..., nan_policy='stop') to get the partial result)",
                                     result)
        elif interrupted:
            result.status = f"interrupted after step {done} of {num_steps}"
        return result

    def _run_chunks(self, compiled, dynamic, state, num_steps, progress_bar, feed=None):
        """The compiled loop in up to ``CHUNKS`` equal chunks of at least ``MIN_CHUNK_STEPS``
        steps: between chunks a KeyboardInterrupt is honoured (returning the state reached) and a
        non-finite run stops early. With a batch ``feed`` the chunks are its transfer size, and
        the next chunk's batches are gathered and sent while the device runs the current one."""
        chunk = -(-num_steps // max(1, min(CHUNKS, num_steps // MIN_CHUNK_STEPS)))
        if feed is not None:
            chunk = min(chunk, feed.stream.steps_per_transfer)
        every = progress.every_for(num_steps)
        infos, done, failed_at, interrupted = [], 0, 0, False
        carry = (state, jnp.asarray(0, jnp.int32))
        bar = progress.ProgressBar(num_steps, type(self).__name__, enabled=progress_bar)
        batches = None if feed is None else feed(0, chunk)
        progress.take_interrupt()   # forget one that came after the last run
        with bar as bar_id:
            try:
                while done < num_steps and failed_at == 0:
                    new_carry, info = compiled.run(carry, dynamic, batches, bar_id,
                                                   jnp.asarray(done, jnp.int32),
                                                   jnp.asarray(num_steps, jnp.int32),
                                                   num_steps=chunk, every=every)
                    if feed is not None and done + chunk < num_steps:
                        batches = feed(done + chunk, chunk)   # overlaps the running chunk
                    failed = int(new_carry[1])        # waits for the chunk: one sync per chunk
                    carry, infos, done, failed_at = (new_carry, infos + [info],
                                                     min(done + chunk, num_steps), failed)
                    if progress.take_interrupt():   # Ctrl-C during a progress callback
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                interrupted = True
            except jax.errors.JaxRuntimeError as err:
                # Ctrl-C in JAX's own host-callback code around the progress bar: the chunk failed,
                # the carry is still the last finished chunk's
                if "KeyboardInterrupt" not in str(err):
                    raise
                interrupted = True
            if progress_bar:
                jax.effects_barrier()
                bar.finish(done if failed_at == 0 else failed_at - 1)
        if infos:
            info = jax.tree.map(lambda *xs: jnp.concatenate(xs)[:done], *infos)
        else:  # interrupted before the first chunk finished, or num_steps == 0
            info = self._empty_info(compiled, dynamic, carry, feed)
        return carry[0], info, done, failed_at, interrupted

    def _empty_info(self, compiled, dynamic, carry, feed=None):
        batches = None if feed is None else feed.shapes(1)
        shapes = jax.eval_shape(lambda c, d, b: compiled.run(c, d, b, jnp.int32(0), jnp.int32(0), jnp.int32(1),
                                                             num_steps=1, every=1)[1], carry, dynamic, batches)
        return jax.tree.map(lambda sd: jnp.zeros((0,) + sd.shape[1:], sd.dtype), shapes)

    def _check_loader(self, data_loader, kwargs):
        from numpyro_gflow.data import StreamedData

        if data_loader is None:
            return None
        if not self.supports_streaming:
            raise ValueError(f"{type(self).__name__} does not take a data_loader: it needs the "
                             "model's exact log density (all rows) at every step")
        if not isinstance(data_loader, StreamedData):
            raise TypeError(f"data_loader must be a numpyro_gflow.StreamedData, got {type(data_loader).__name__}")
        clash = sorted(set(data_loader.names) & set(kwargs))
        if clash:
            raise TypeError(f"model keyword argument(s) {clash} are given both directly and by the "
                            "data_loader; pass each once")
        return data_loader

    @staticmethod
    def _data_mesh(devices):
        from jax.sharding import Mesh

        devices = jax.devices() if isinstance(devices, str) and devices == "auto" else devices
        if devices is None or isinstance(devices, str) or len(list(devices)) < 2:
            raise ValueError("shard_data=True needs several devices: pass devices=[...] or run where "
                             f"jax.devices() lists several (got devices={devices!r})")
        return Mesh(np.asarray(list(devices)), ("data",))

    @staticmethod
    def _shard_rows(dynamic, bridge, mesh):
        """Row-shard the array inputs whose leading axis is a plate's size (and divides evenly)."""
        sizes = set(bridge.plate_sizes.values())
        n = mesh.devices.size

        def put(x):
            rows = jnp.ndim(x) >= 1 and x.shape[0] in sizes and x.shape[0] % n == 0
            return jax.device_put(x, _rows(mesh) if rows else _replicated(mesh))

        return [put(x) for x in dynamic]

    def _place(self, state, devices):
        """Shard the state's particle-axis arrays over ``devices`` (see ``run``)."""
        n = state.particles.shape[0]
        if isinstance(devices, str):
            if devices != "auto":
                raise ValueError(f"devices must be 'auto', None or a list of devices, got {devices!r}")
            devices = jax.devices()
            if len(devices) < 2 or n % len(devices):
                return state
        elif devices is None:
            return state
        devices = list(devices)
        if not devices:
            raise ValueError("devices is empty")
        if len(devices) == 1:
            return jax.device_put(state, devices[0])
        if n % len(devices):
            raise ValueError(f"num_particles={n} must be a multiple of the number of devices "
                             f"({len(devices)}) to split the particles across them")
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        mesh = Mesh(np.asarray(devices), ("particles",))
        split, same = NamedSharding(mesh, PartitionSpec("particles")), NamedSharding(mesh, PartitionSpec())

        def put(x):
            if not isinstance(x, jax.Array):
                return x
            along = jnp.ndim(x) >= 1 and x.shape[0] == n
            return jax.device_put(x, split if along else same)

        return jax.tree.map(put, state)

    def _result(self, state, info, bridge, args, kwargs, rng_key) -> InferenceResult:
        """The particles as the result; engines that fit a density override this."""
        return InferenceResult(
            type(self).__name__, bridge, args, kwargs,
            self._to_unconstrained(state.particles, bridge),
            info._asdict(), state=state, objective=self.objective,
        )

    # ------------------------------------------------------------------ MCMCKernel API
    @property
    def model(self):
        return self._model

    @property
    def sample_field(self):
        return "particles"

    @property
    def is_ensemble_kernel(self):
        return True

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):
        if is_prng_key(rng_key) or jnp.ndim(rng_key) == 0:
            raise ValueError(
                f"{type(self).__name__} is an ensemble kernel: use MCMC(..., num_chains=n_particles, "
                "chain_method='vectorized') with num_chains >= 2 (each chain is a particle)."
            )
        compiled, dynamic = self._prepare(model_args, model_kwargs)
        self._kernel_bridge = compiled.bridge
        z = self._initial_particles(compiled, dynamic, rng_key, init_params)
        z = self._from_unconstrained(z, compiled.bridge)
        return self._core_init(z, self._state_key(rng_key),
                               Target(compiled.bridge, model_args, model_kwargs))

    def sample(self, state, model_args, model_kwargs):
        score_fn = self._make_score_fn(self._kernel_bridge, model_args, model_kwargs)
        return self._core_step(state, score_fn)[0]

    def postprocess_fn(self, model_args, model_kwargs):
        bridge = self._kernel_bridge
        return lambda z: self._constrain_one(bridge, z, model_args, model_kwargs)

    def get_diagnostics_str(self, state):
        return ""
