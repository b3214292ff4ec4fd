"""The compiled driver every engine runs on: one ``lax.scan`` per chunk of steps, compiled once
per input shapes, with the NaN policy, the progress bar and Ctrl-C between chunks.

The driver knows an engine only through its hooks (`numpyro_gflow.engines.base.Engine`):
``_core_init`` (eager, once per run), ``_core_step`` (traced into the scan), ``objective`` and
``tolerates_non_finite_objective``. Nothing in the loop syncs with the host: a non-finite step
is noticed inside the compiled code, which freezes the state at the last finite step; the host
looks once per chunk.
"""

from __future__ import annotations

from collections import OrderedDict

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from numpyro_gflow import progress
from numpyro_gflow.bridge import ModelBridge, merge_static_args, split_static_args
from numpyro_gflow.compilation import brief_jit

__all__ = [
    "CHUNKS",
    "MIN_CHUNK_STEPS",
    "Compiled",
    "NonFiniteError",
    "all_finite",
    "compile_engine",
    "run_chunks",
]

#: the loop runs in up to this many compiled chunks (between them: Ctrl-C, early stop) ...
CHUNKS = 10
#: ... of at least this many steps (each chunk costs a dispatch and a sync: measured ~30 ms on
#: a 1e5-row model, where 10 chunks of one step doubled a 10-step run)
MIN_CHUNK_STEPS = 100
#: an engine with a step size in its state (``Engine._shrink_step``) retries a step that made
#: the state or objective non-finite (or that the engine's ``_step_acceptable`` rejects) with
#: the step halved, up to this many times (1/32), and keeps the smaller step; only then does
#: the NaN policy apply
MAX_BACKTRACKS = 5


class NonFiniteError(FloatingPointError):
    """A run produced a non-finite state or objective; ``.result`` holds the run up to the last
    finite step (its ``status`` names the step)."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


def all_finite(tree) -> jax.Array:
    """Whether every float leaf of ``tree`` is finite (a traced bool)."""
    leaves = [x for x in jax.tree.leaves(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    return (jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves
            else jnp.asarray(True))


class Compiled(NamedTuple):
    """One engine's compiled programs for one input signature."""

    bridge: ModelBridge
    init: Callable      # (keys, dynamic) -> (z (n, d), ok (n,)): initial points, jitted
    run: Callable       # one chunk of steps, jitted (see `compile_engine`)
    static: tuple
    treedef: object
    #: further programs compiled for this signature (``Engine._compiled_program``: the init)
    programs: dict

    def model_inputs(self, dynamic):
        return merge_static_args(dynamic, self.static, self.treedef)


#: (model, input signature, init strategy) -> (bridge, jitted initial points, further shared
#: programs by name: `shared_program`), shared by the
#: engines built on the same model (the traced model and its init program do not depend on
#: the engine: a second engine on the same inputs reuses them instead of tracing the model
#: and compiling its init again); the most recently used `MODEL_CACHE_SIZE` are kept
_MODEL_PROGRAMS: OrderedDict = OrderedDict()
MODEL_CACHE_SIZE = 32


def _model_key(engine, signature, stream):
    if signature is None or stream is not None:   # unhashable inputs; a streamed plate
        return None
    return (engine.model, signature, engine.init_strategy)


def _model_entry(engine, signature, stream=None):
    """The shared entry ``(bridge, init program, programs)`` of this engine's model and inputs
    (moved to the most recent), or None."""
    key = _model_key(engine, signature, stream)
    try:
        hit = None if key is None else _MODEL_PROGRAMS.get(key)
    except TypeError:   # an unhashable model or init strategy
        return None
    if hit is not None:
        _MODEL_PROGRAMS.move_to_end(key)
    return hit


def _remember_model_programs(engine, signature, stream, bridge, init_jit):
    key = _model_key(engine, signature, stream)
    if key is None:
        return
    try:
        _MODEL_PROGRAMS[key] = (bridge, init_jit, {})   # {}: `shared_program`'s programs
    except TypeError:
        return
    while len(_MODEL_PROGRAMS) > MODEL_CACHE_SIZE:
        _MODEL_PROGRAMS.popitem(last=False)


def jit_on_target(target, fn: Callable, static, treedef, level: int | None = None) -> Callable:
    """``(dynamic, *arrays) -> fn(target, *arrays)`` under ``jax.jit``: the target rebuilt
    from its traced array inputs (``dynamic``) and its static ones. ``level``: a program that
    runs once per fit, compiled by `compilation.brief_jit` at that level."""
    from numpyro_gflow.engines.base import Target

    bridge, num_steps, coords = target.bridge, target.num_steps, target.coords

    def program(dyn, *xs):
        a, kw = merge_static_args(dyn, static, treedef)
        return fn(Target(bridge, a, kw, num_steps, coords), *xs)

    return jax.jit(program) if level is None else brief_jit(program, level=level)


def shared_program(engine, target, name, fn: Callable, level: int | None = None
                   ) -> Callable | None:
    """``arrays -> fn(target, *arrays)`` under ``jax.jit``, compiled once for every engine on
    the same model, input signature and init strategy (beside the shared bridge and init
    program; ``name``, hashable, must identify ``fn`` and everything it closes over but the
    model and its inputs). None where the target's bridge is not the shared one (streamed
    data, unhashable inputs, an evicted entry): use the engine's own cache then."""
    dynamic, static, treedef, signature = split_static_args(target.model_args,
                                                            target.model_kwargs)
    entry = _model_entry(engine, signature)
    if entry is None or entry[0] is not target.bridge:
        return None
    programs = entry[2]
    if name not in programs:
        programs[name] = jit_on_target(target, fn, static, treedef, level)
    return lambda *arrays: programs[name](dynamic, *arrays)


def compile_engine(engine, args, kwargs, stream=None) -> tuple[Compiled, list]:
    """The bridge and compiled init/run of ``engine`` for these input shapes, built once and
    cached on the engine. ``stream``: a `StreamedData` whose first batch is in ``kwargs``.
    Returns the programs and the dynamic (array) inputs to pass them."""
    from numpyro_gflow.engines.base import Target

    dynamic, static, treedef, signature = split_static_args(args, kwargs)
    if stream is not None:
        signature = (signature, "streamed", stream.num_rows, stream.batch_size, stream.names)
    try:
        cached = engine._compiled.get(signature)
    except TypeError:  # unhashable static input: no cache
        signature, cached = None, None
    if cached is not None:
        return cached, dynamic
    shared = _model_entry(engine, signature, stream)
    if shared is not None:
        bridge, init_jit, _ = shared
    else:
        bridge = ModelBridge.from_model(engine.model, *args, **kwargs)
        if stream is not None:
            bridge = bridge.with_streamed_plate(stream.num_rows, stream.batch_size)
        init_jit = None
    engine._check_target(Target(bridge, args, kwargs))   # before anything compiles

    def model_inputs(dyn):
        return merge_static_args(dyn, static, treedef)

    def init_fn(keys, dyn):
        a, kw = model_inputs(dyn)
        return bridge.init_particles(keys, a, kw, engine.init_strategy)

    if init_jit is None:
        init_jit = brief_jit(init_fn)   # initial points: a few model evaluations, once
        _remember_model_programs(engine, signature, stream, bridge, init_jit)

    def run_fn(carry, dyn, batches, bar_id, start, total, num_steps, every):
        # one chunk of ``num_steps`` steps from global step ``start``; steps at or past
        # ``total`` are skipped (so every chunk has one length: one compilation). The carry
        # holds the last state whose floats were all finite and the 1-based step at which
        # the engine first produced a non-finite state or objective (0: none): after that
        # step nothing moves (no host sync needed to stop). ``batches``: None, or streamed
        # model keyword arrays with a leading axis of ``num_steps`` (one batch per step)
        a, kw = model_inputs(dyn)
        target = Target(bridge, a, kw)

        def finite(new, info):
            ok = all_finite(new)
            if engine.objective and not engine.tolerates_non_finite_objective:
                ok = ok & jnp.all(jnp.isfinite(getattr(info, engine.objective)))
            return ok

        def attempt(state, step_target):
            """The engine's step; where it has a step size to shrink, a non-finite step is
            retried from the same state with the step halved (at most `MAX_BACKTRACKS`
            times, in one ``while_loop``: the step is traced once)."""
            if engine._shrink_step(state, 1.0) is None:
                new, info = engine._step(state, step_target)
                return new, info, finite(new, info), jnp.asarray(0, jnp.int32)

            def again(c):
                k, _, _, _, good = c
                return (k == 0) | (~good & (k <= MAX_BACKTRACKS))

            def one(c):
                k = c[0]
                factor = (0.5 ** k.astype(jnp.float32))
                new, info = engine._step(engine._shrink_step(state, factor), step_target)
                ok = finite(new, info)
                accept = engine._step_acceptable(info)
                good = ok if accept is None else ok & accept
                return k + 1, new, info, ok, good

            shapes = jax.eval_shape(lambda: engine._step(state, step_target))
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            false = jnp.asarray(False)
            k, new, info, ok, _ = lax.while_loop(
                again, one, (jnp.asarray(0, jnp.int32), *zeros, false, false))
            # a finite step that is still not acceptable after the last halving is kept (the
            # engine's own guard handles it); only a non-finite one is a failure
            return new, info, ok, k - 1

        def body(carry, xs):
            i, batch = xs
            state, failed_at, backtracks = carry
            step = (start + i + 1).astype(jnp.int32)
            step_target = target if batch is None else target.with_kwargs(batch)
            new, info, ok, retried = attempt(state, step_target)
            active = step <= total
            failed_at = jnp.where(active & (failed_at == 0) & ~ok, step, failed_at)
            keep = active & (failed_at == 0)
            state = lax.cond(keep, lambda: new, lambda: state)
            backtracks = backtracks + jnp.where(keep, retried, 0)
            progress.tick(bar_id, step,
                          getattr(info, engine.objective) if engine.objective else 0.0, every)
            return (state, failed_at, backtracks), info

        return lax.scan(body, carry, (jnp.arange(num_steps, dtype=jnp.int32), batches))

    loop = (jax.jit(run_fn, static_argnames=("num_steps", "every")) if engine.loop_level is None
            else brief_jit(run_fn, level=engine.loop_level, static_argnames=("num_steps", "every")))
    compiled = Compiled(bridge, init_jit, loop, static, treedef, {})
    if signature is not None:
        engine._compiled[signature] = compiled
    return compiled, dynamic


def run_chunks(engine, compiled: Compiled, dynamic, state, num_steps: int, progress_bar: bool,
               feed=None):
    """The compiled loop in up to `CHUNKS` equal chunks of at least `MIN_CHUNK_STEPS` steps:
    between chunks a KeyboardInterrupt is honoured (returning the state reached) and a
    non-finite run stops early. With a batch ``feed`` the chunks are its transfer size, and the
    next chunk's batches are gathered and sent while the device runs the current one.

    Returns ``(state, info, steps_done, failed_at, interrupted, backtracks)``; ``info`` has one
    row per step done; ``backtracks``: how many times a step was retried smaller."""
    chunk = -(-num_steps // max(1, min(CHUNKS, num_steps // MIN_CHUNK_STEPS)))
    if feed is not None:
        chunk = min(chunk, feed.stream.steps_per_transfer)
    every = progress.every_for(num_steps)
    infos, done, failed_at, interrupted = [], 0, 0, False
    carry = (state, np.int32(0), np.int32(0))   # NumPy scalars: no XLA program to make them
    bar = progress.ProgressBar(num_steps, type(engine).__name__, enabled=progress_bar)
    batches = None if feed is None else feed(0, chunk)
    progress.take_interrupt()   # forget one that came after the last run
    with bar as bar_id:
        try:
            while done < num_steps and failed_at == 0:
                new_carry, info = compiled.run(carry, dynamic, batches, bar_id,
                                               np.int32(done), np.int32(num_steps),
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
    if len(infos) == 1 and done == chunk:
        info = infos[0]
    elif infos:   # on the host: eager concatenations would each compile a program
        info = jax.tree.map(lambda *xs: np.concatenate(xs)[:done], *infos)
    else:  # interrupted before the first chunk finished, or num_steps == 0
        info = empty_info(compiled, dynamic, carry, feed)
    return carry[0], info, done, failed_at, interrupted, int(carry[2])


def empty_info(compiled: Compiled, dynamic, carry, feed=None):
    """The per-step info of zero steps (right fields and dtypes, length 0)."""
    batches = None if feed is None else feed.shapes(1)
    shapes = jax.eval_shape(lambda c, d, b: compiled.run(c, d, b, jnp.int32(0), jnp.int32(0),
                                                         jnp.int32(1), num_steps=1, every=1)[1],
                            carry, dynamic, batches)
    return jax.tree.map(lambda sd: jnp.zeros((0,) + sd.shape[1:], sd.dtype), shapes)
