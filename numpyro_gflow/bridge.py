"""The one bridge from a NumPyro model to a flat, unconstrained log density.

Every engine sees the posterior through `ModelBridge`: a vector ``z`` in R^d (NumPyro's
unconstrained space, sites raveled in a fixed order), ``log_density(z)``, its gradient, batched
versions over particles, and ``constrain`` back to NumPyro's site dict (deterministic sites
included). The potential, transforms and postprocessing are NumPyro's own
(`numpyro.infer.util.potential_energy`, `constrain_fn`,
`find_valid_initial_params`); this module adds validation with errors
that name the offending site, and mini-batch plates.

Mini-batches: a plate declared with ``subsample_size`` draws its indices from a key passed to
``log_density(z, rng_key=...)`` (the same indices for every particle of a step, drawn without
replacement while the plate has at most `PERMUTE_MAX_RATIO` batches' worth of rows, with
replacement above, where a permutation of all rows would dominate the step); NumPyro's plate
then rescales the likelihood by ``size / subsample_size``, so the
estimate is unbiased. Without a key the full data are used.
"""

from __future__ import annotations

import math

import contextlib
import warnings
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import (
    constrain_fn,
    find_valid_initial_params,
    log_likelihood,
    potential_energy,
)

__all__ = [
    "ModelBridge",
    "SubsamplePlate",
    "split_static_args",
]


#: a subsampled plate draws its batch without replacement (a permutation of all N rows) while
#: N <= this many batches, with replacement (uniform indices, O(batch)) above
PERMUTE_MAX_RATIO = 16


class SubsamplePlate(NamedTuple):
    name: str
    size: int
    subsample_size: int
    #: the model is given each batch's rows already (`numpyro_gflow.StreamedData`): the plate's
    #: indices are the batch's own 0..subsample_size-1, and NumPyro still rescales by
    #: size / subsample_size
    streamed: bool = False


#: `ModelBridge._traced_log_density`'s placeholder for a traced input
_TRACED = object()


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def split_static_args(args: tuple, kwargs: dict):
    """Split model inputs into array leaves (traced under jit) and a hashable static rest.

    Python scalars, strings and other non-array leaves stay static so that models using them for
    shapes or control flow still trace; arrays are passed as dynamic inputs so a second run with
    same-shaped data reuses the compiled program.
    """
    leaves, treedef = jax.tree.flatten((args, kwargs))
    dynamic, static = [], []
    for leaf in leaves:
        if _is_array(leaf):
            dynamic.append(leaf)
            static.append(None)
        else:
            static.append(leaf)
    signature = (
        treedef,
        tuple(static),
        tuple((jnp.shape(x), jnp.result_type(x)) for x in dynamic),
    )
    return dynamic, static, treedef, signature


def merge_static_args(dynamic, static, treedef):
    it = iter(dynamic)
    leaves = [next(it) if s is None else s for s in static]
    return jax.tree.unflatten(treedef, leaves)


def _trace_model(model, rng_key, args, kwargs):
    try:
        return handlers.trace(handlers.seed(model, rng_key)).get_trace(*args, **kwargs)
    except NotImplementedError:
        # a site that cannot be sampled (dist.ImproperUniform, as used with numpyro.factor):
        # give latent sites NumPyro's uniform initial values instead, as initialize_model does
        from numpyro.infer.initialization import init_to_uniform

        seeded = handlers.substitute(handlers.seed(model, rng_key), substitute_fn=init_to_uniform)
        return handlers.trace(seeded).get_trace(*args, **kwargs)


#: what JAX raises when the model turns a traced input array into a Python value (``float(y)``,
#: ``if y.sum() > 0:``, ``int(n)``, ``np.asarray(y)``): the model runs fine on concrete arrays
#: but not under the engines' ``jit``
_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
)


@contextlib.contextmanager
def _model_under_jit():
    """Turn JAX's tracer-conversion errors from the model into a ``ValueError`` that says why."""
    try:
        yield
    except _TRACER_ERRORS as e:
        raise ValueError(
            "the model converts one of its array inputs to a Python value (float(), int(), bool "
            "in an if/while, or a NumPy call) while numpyro-gflow traces it under jax.jit with "
            "its array arguments abstract. Pass such inputs as Python scalars (they stay static), "
            "or use jnp.where / lax.cond instead of Python control flow on data. JAX said: "
            f"{type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e


def _sites_before_failure(model, rng_key, args, kwargs) -> list[str]:
    """Names of the sites a failing model records before it fails (where to look)."""
    tracer = handlers.trace(handlers.seed(model, rng_key))
    try:
        tracer.get_trace(*args, **kwargs)
    except Exception:
        pass
    return list(getattr(tracer, "trace", {}) or {})


def _is_factor(site) -> bool:
    """A ``numpyro.factor`` site: an observed `Unit` distribution carrying a log-density term."""
    from numpyro.distributions.distribution import Unit

    return isinstance(site["fn"], Unit)


def _check_observed_shape(name, fn_name, shape, event_dim, batch_shape) -> None:
    """An observed value whose distribution has a larger batch shape is broadcast, and every
    observation counted several times (an input with an extra axis, ``x[:, None]``); one whose
    shape does not broadcast with it cannot be scored. Both are errors naming the site."""
    batch = shape[: max(len(shape) - event_dim, 0)]
    try:
        joint = tuple(jnp.broadcast_shapes(batch, batch_shape))
    except ValueError:
        raise ValueError(
            f"observed site {name!r}: the observed value has shape {shape} but its distribution "
            f"{fn_name} has batch shape {batch_shape}; they do not "
            "broadcast. Check that the data and the inputs the distribution's parameters are "
            "computed from have the same number of rows.") from None
    if batch and math.prod(joint) != math.prod(batch):   # leading 1s add no copies
        raise ValueError(
            f"observed site {name!r}: its distribution {fn_name} has batch shape "
            f"{batch_shape} but the observed value has shape {shape}, so the "
            f"likelihood would broadcast to {joint} and count each observation several times. "
            "Usually an input has an extra axis (e.g. x of shape (N, 1) where (N,) was meant).")


class _Site(NamedTuple):
    """What `ModelBridge.from_model` needs of one site of the model's trace: Python values and
    shapes only (no arrays), so it can be read off an abstract trace."""

    name: str
    type: str                      # "sample", "deterministic", "plate", ...
    observed: bool = False
    factor: bool = False
    fn_name: str = ""
    discrete: bool = False
    support: object = None         # latent sites: the NumPyro constraint
    value_shape: tuple = ()
    event_dim: int = 0
    batch_shape: tuple = ()
    unconstrained_shape: tuple = ()
    plate: tuple | None = None     # plates: (size, subsample_size)


def _read_sites(tr) -> list[_Site]:
    from numpyro.distributions import biject_to

    out = []
    for name, site in tr.items():
        if site["type"] == "sample":
            fn = site["fn"]
            if site["is_observed"]:
                out.append(_Site(name, "sample", True, _is_factor(site), type(fn).__name__,
                                 value_shape=tuple(jnp.shape(site["value"])),
                                 event_dim=len(fn.event_shape),
                                 batch_shape=tuple(fn.batch_shape)))
            elif fn.support.is_discrete:
                out.append(_Site(name, "sample", fn_name=type(fn).__name__, discrete=True))
            else:
                shape = jnp.shape(biject_to(fn.support).inv(site["value"]))
                out.append(_Site(name, "sample", fn_name=type(fn).__name__, support=fn.support,
                                 unconstrained_shape=tuple(shape)))
        elif site["type"] == "plate":
            size, subsample_size = site["args"]
            out.append(_Site(name, "plate", plate=(size, subsample_size)))
        else:
            out.append(_Site(name, site["type"]))
    return out


def _holds_tracer(obj, depth=0) -> bool:
    """Whether a constraint (or one it wraps) holds a traced array (a bound computed in the
    model, e.g. ``Uniform(0, jnp.max(y))``)."""
    if isinstance(obj, jax.core.Tracer):
        return True
    if depth > 4 or not hasattr(obj, "__dict__"):
        return False
    for v in vars(obj).values():
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(v)):
            return True
        if hasattr(v, "__dict__") and _holds_tracer(v, depth + 1):
            return True
    return False


def _abstract_sites(model, rng_key, args, kwargs) -> list[_Site] | None:
    """The model's sites read off an abstract trace (``jax.make_jaxpr``: no operation runs, so
    nothing compiles; run op by op, a model's trace costs one XLA compilation per operation),
    or None where that cannot stand for a concrete run: the model needs concrete values, or a
    latent site's support depends on computed arrays (its bounds would be traced values)."""
    found: list = []

    def read():
        found.append(_read_sites(_trace_model(model, rng_key, args, kwargs)))
        return jnp.zeros(())

    try:
        jax.make_jaxpr(read)()
    except Exception:   # noqa: BLE001 - the concrete trace runs next and reports
        return None
    sites = found[0]
    if any(s.support is not None and _holds_tracer(s.support) for s in sites):
        return None
    return sites


class ModelBridge:
    """A NumPyro model with fixed inputs, seen as a log density on R^d.

    Built by `from_model`, which traces the model once to validate it and to fix the
    order and shapes of the latent sites. All methods below are pure JAX functions of their
    array arguments and can be jit-compiled, vmapped and differentiated. ``args``/``kwargs``
    are passed explicitly so one compiled program serves any data of the same shapes.
    """

    def __init__(self, model, prototype: dict, plates: tuple[SubsamplePlate, ...],
                 observed_sites: tuple[str, ...], deterministic_sites: tuple[str, ...],
                 supports: dict | None = None, plate_sizes: dict | None = None,
                 factor_sites: tuple[str, ...] = ()):
        self.model = model
        #: plate name -> full size, every plate of the model (what ``shard_data`` splits by)
        self.plate_sizes = {} if plate_sizes is None else plate_sizes
        #: site name -> NumPyro constraint of its support (what mirror maps key on)
        self.supports = {} if supports is None else supports
        self.prototype = prototype
        found = []

        def ravel():   # traced, not run: no XLA computation for the layout
            flat, unravel = ravel_pytree(prototype)
            found.append((flat.shape[0], unravel, tuple(unravel(flat).keys())))
            return flat

        jax.make_jaxpr(ravel)()
        dim, self._unravel, names = found[0]
        self.dim = int(dim)
        self.site_names = names   # the raveling order (sorted by name)
        self.subsample_plates = plates
        self.observed_sites = observed_sites
        self.deterministic_sites = deterministic_sites
        #: ``numpyro.factor`` sites: log-density terms, not observations
        self.factor_sites = factor_sites
        #: `program`'s compiled functions: (name, input signature) -> jitted
        self._programs: dict = {}
        #: `log_density` inside programs: (inputs' structure, static leaves, avals) -> the
        #: model's traced jaxpr, as a jitted function
        self._densities: dict = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model, *args, rng_key=None, **kwargs) -> "ModelBridge":
        """Trace ``model(*args, **kwargs)`` once; raise a clear error for unsupported models."""
        rng_key = jax.random.key(0) if rng_key is None else rng_key
        sites = _abstract_sites(model, rng_key, args, kwargs)
        if sites is None:
            try:
                sites = _read_sites(_trace_model(model, rng_key, args, kwargs))
            except Exception as e:  # the model itself failed: say so with the model's own error
                before = _sites_before_failure(model, rng_key, args, kwargs)
                where = (f" after site {before[-1]!r} (sites traced before the failure: {before})"
                         if before else " before its first site")
                raise ValueError(
                    f"running the model to trace its sites failed{where}: {e!r}. Check the "
                    "model's arguments (number, shapes) and its distributions' parameters."
                ) from e
        latent, observed, deterministic, plates, plate_sizes, factors = {}, [], [], [], {}, []
        for site in sites:
            name = site.name
            if site.type == "sample":
                if site.observed:
                    if site.factor:   # numpyro.factor: a log-density term, no data
                        factors.append(name)
                    else:
                        _check_observed_shape(name, site.fn_name, site.value_shape,
                                              site.event_dim, site.batch_shape)
                        observed.append(name)
                    continue
                if site.discrete:
                    raise ValueError(
                        f"latent site {name!r} is discrete ({site.fn_name}); "
                        "numpyro-gflow engines move continuous particles and do not support "
                        "discrete latent sites, enumerated (infer={'enumerate': 'parallel'}) or "
                        "not. Marginalise the site out by hand or make it continuous."
                    )
                latent[name] = site
            elif site.type == "deterministic":
                deterministic.append(name)
            elif site.type == "plate":
                size, subsample_size = site.plate
                plate_sizes[name] = int(size)
                if subsample_size is not None and subsample_size < size:
                    plates.append(SubsamplePlate(name, int(size), int(subsample_size)))
        if not latent:
            raise ValueError(
                "the model has no latent sample sites: there is nothing to infer "
                "(every numpyro.sample site is observed)."
            )
        dtype = jnp.result_type(float)
        # NumPy zeros: no XLA computation for the prototype (ravel_pytree works on either)
        prototype = {name: np.zeros(site.unconstrained_shape, dtype)
                     for name, site in latent.items()}
        supports = {name: site.support for name, site in latent.items()}
        return cls(model, prototype, tuple(plates), tuple(observed), tuple(deterministic), supports,
                   plate_sizes, tuple(factors))

    # ------------------------------------------------------------------ flatten / unflatten
    def flatten(self, params: dict) -> jax.Array:
        """Site dict (unconstrained) -> flat vector of length ``dim``."""
        return ravel_pytree({k: params[k] for k in self.site_names})[0]

    def unflatten(self, z: jax.Array) -> dict:
        return self._unravel(z)

    def flatten_batch(self, params: dict) -> jax.Array:
        return jax.vmap(self.flatten)(params)

    def check_params(self, params, batched: bool, what: str = "init_params") -> None:
        """Raise a ``TypeError``/``ValueError`` naming the site unless ``params`` is a dict with
        exactly the latent sites, each of its unconstrained shape (``batched``: one leading
        axis, the same length for every site). Runs before anything compiles."""
        if not isinstance(params, dict):
            raise TypeError(f"{what} must be a dict of latent site name -> unconstrained value, "
                            f"got {type(params).__name__}")
        missing = [k for k in self.site_names if k not in params]
        extra = [k for k in params if k not in self.site_names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing latent site(s) {missing}")
            for k in extra:
                kind = ("a deterministic site" if k in self.deterministic_sites else
                        "an observed site" if k in self.observed_sites else "not a site")
                parts.append(f"{k!r} is {kind} of the model")
            raise ValueError(f"{what}: {'; '.join(parts)}. It needs exactly the latent sites "
                             f"{list(self.site_names)} (values in the unconstrained space)")
        rows = None
        for k in self.site_names:
            shape, want = tuple(jnp.shape(params[k])), tuple(self.prototype[k].shape)
            if batched:
                ok = len(shape) == len(want) + 1 and shape[1:] == want
                rows = shape[0] if ok and rows is None else rows
                ok = ok and shape[0] == rows
                expected = f"(n,) + {want} with the same n for every site (n = {rows})" \
                    if rows is not None else f"(n,) + {want}"
            else:
                ok, expected = shape == want, f"{want}"
            if not ok:
                raise ValueError(f"{what}[{k!r}] has shape {shape}, expected {expected}: the "
                                 f"site's shape in the unconstrained space"
                                 + (", one row per particle (or component)" if batched else ""))

    def unflatten_batch(self, z: jax.Array) -> dict:
        return jax.vmap(self.unflatten)(z)

    # ------------------------------------------------------------------ mini-batches
    def _model_with_plates(self, rng_key=None):
        """The model with every subsampled plate fixed: to random indices, or the full range."""
        if not self.subsample_plates:
            return self.model
        data = {}
        keys = (jax.random.split(rng_key, len(self.subsample_plates))
                if rng_key is not None else [None] * len(self.subsample_plates))
        for plate, key in zip(self.subsample_plates, keys):
            if plate.streamed:
                data[plate.name] = jnp.arange(plate.subsample_size)
            elif key is None:
                data[plate.name] = jnp.arange(plate.size)
            elif plate.size <= PERMUTE_MAX_RATIO * plate.subsample_size:
                data[plate.name] = jax.random.permutation(key, plate.size)[: plate.subsample_size]
            else:
                # a permutation sorts all N indices every step (measured: 72 steps/s at N = 10^5
                # vs 1680 for the same batches streamed); uniform draws with replacement cost
                # O(batch) and the N / B rescaling stays unbiased
                data[plate.name] = jax.random.randint(key, (plate.subsample_size,), 0, plate.size)
        model = handlers.substitute(self.model, data=data)
        if rng_key is not None:
            return model

        def full_data_model(*args, **kwargs):
            # NumPyro warns when a plate's indices differ in length from its subsample_size;
            # here the full range is intended
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="subsample_size does not match")
                return model(*args, **kwargs)

        return full_data_model

    def with_streamed_plate(self, num_rows: int, batch_size: int) -> "ModelBridge":
        """A copy whose subsampled plate(s) of ``size == num_rows`` and ``subsample_size ==
        batch_size`` take the batch the model is given (see `numpyro_gflow.StreamedData`)."""
        import copy

        if batch_size == num_rows and num_rows in self.plate_sizes.values():
            return self        # every batch is all rows (reordered): a plain plate, no rescaling
        plates = tuple(p._replace(streamed=True)
                       if (p.size, p.subsample_size) == (num_rows, batch_size)
                       else p for p in self.subsample_plates)
        if not any(p.streamed for p in plates):
            found = ", ".join(f"{p.name!r} (size {p.size}, subsample_size {p.subsample_size})"
                              for p in self.subsample_plates) or "none"
            raise ValueError(
                f"streamed data: the model needs a plate of size {num_rows} (the rows of the "
                f"data) with subsample_size={batch_size} (the batch size) around the streamed "
                f"rows' likelihood, e.g. numpyro.plate('data', {num_rows}, "
                f"subsample_size={batch_size}); subsampled plates found: {found}")
        new = copy.copy(self)
        new.subsample_plates = plates
        new._programs = {}   # its densities differ: compiled programs are not shared
        new._densities = {}
        return new

    # ------------------------------------------------------------------ compiled programs
    def program(self, name, fn: Callable, args=(), kwargs=None) -> Callable:
        """``(*arrays) -> fn(self, args, kwargs, *arrays)`` under ``jax.jit``, compiled once per
        ``name`` and input signature and kept on the bridge: every result, check and engine on
        this model and same-shaped inputs reuses it (instead of running ``fn`` op by op, one
        XLA compilation per operation, at every call). The model's array inputs are traced,
        the rest static; ``name`` (hashable) must identify ``fn`` and every Python value it
        closes over. With unhashable static inputs ``fn`` runs uncompiled."""
        kwargs = {} if kwargs is None else kwargs
        dynamic, static, treedef, signature = split_static_args(args, kwargs)
        key = (name, signature)
        try:
            compiled = self._programs.get(key)
        except TypeError:   # an unhashable static input
            return lambda *arrays: fn(self, args, kwargs, *arrays)
        if compiled is None:
            def run(dyn, *arrays):
                a, kw = merge_static_args(dyn, static, treedef)
                return fn(self, a, kw, *arrays)

            compiled = self._programs[key] = jax.jit(run)
        return lambda *arrays: compiled(dynamic, *arrays)

    def batch_value_and_grad_jit(self, z, args=(), kwargs=None):
        """`log_density` (full data) and its gradient at each row of ``z`` (n, d), compiled
        (`program`): one program for the results' and checks' densities and scores."""
        return self.program("batch_value_and_grad", _batch_value_and_grad, args, kwargs)(z)

    def batch_log_density_jit(self, z, args=(), kwargs=None):
        return self.batch_value_and_grad_jit(z, args, kwargs)[0]

    def batch_score_jit(self, z, args=(), kwargs=None):
        return self.batch_value_and_grad_jit(z, args, kwargs)[1]

    def constrain_batch_jit(self, z, args=(), kwargs=None):
        """`constrain_batch`, compiled (`program`)."""
        return self.program("constrain_batch", _constrain_batch, args, kwargs)(z)

    # ------------------------------------------------------------------ densities
    def log_density(self, z, args=(), kwargs=None, rng_key=None):
        """Unnormalised log posterior at flat unconstrained ``z`` (Jacobian included)."""
        kwargs = {} if kwargs is None else kwargs
        if rng_key is None:
            traced = self._traced_log_density(z, args, kwargs)
            if traced is not None:
                return traced
        model = self._model_with_plates(rng_key)
        with _model_under_jit():
            return -potential_energy(model, args, kwargs, self.unflatten(z))

    def _traced_log_density(self, z, args, kwargs):
        """`log_density` (full data) inside a program, where ``z`` and every array input are
        traced: the model is traced through NumPyro's handlers once per input structure and
        shapes, into a jaxpr that later traces (gradients, Hessian-vector products, vmaps:
        a Laplace start traces the density about ten times) replay without NumPyro, at about a
        fifth of the cost (the breast-cancer regression's Hessian traces in 0.03 s instead of
        0.16). The jaxpr is called as one ``jax.jit`` function, so each use is one call whose
        derivative and batched forms JAX caches with the jaxpr (MixFlow's first call on that
        regression: its three programs' tracing 0.79 -> 0.66 s). None where that does not apply
        (concrete inputs: the model may branch on them)."""
        leaves, treedef = jax.tree.flatten((args, kwargs))
        arrays = [x for x in leaves if _is_array(x)]
        if not isinstance(z, jax.core.Tracer) or not all(isinstance(x, jax.core.Tracer)
                                                         for x in arrays):
            return None
        static = tuple(_TRACED if _is_array(x) else x for x in leaves)
        avals = tuple(jax.typeof(x) for x in (z, *arrays))
        try:
            replay = self._densities.get((treedef, static, avals))
        except TypeError:   # an unhashable static input
            return None
        if replay is None:
            def density(z, *arrays):
                it = iter(arrays)
                a, kw = jax.tree.unflatten(treedef, [next(it) if s is _TRACED else s
                                                     for s in static])
                model = self._model_with_plates(None)
                with _model_under_jit():
                    return -potential_energy(model, a, kw, self.unflatten(z))

            closed = jax.make_jaxpr(density)(
                *(jax.ShapeDtypeStruct(v.shape, v.dtype, weak_type=v.weak_type) for v in avals))
            if any(isinstance(c, jax.core.Tracer) for c in closed.consts):
                return None   # the model closes over a traced value: not reusable elsewhere
            replay = jax.jit(partial(_eval_closed, closed))
            self._densities[(treedef, static, avals)] = replay
        return replay(z, *arrays)[0]

    def value_and_grad(self, z, args=(), kwargs=None, rng_key=None):
        return jax.value_and_grad(self.log_density)(z, args, kwargs, rng_key)

    def batch_value_and_grad(self, z, args=(), kwargs=None, rng_key=None):
        """Log density and score at each row of ``z`` (n, d); one mini-batch for all rows."""
        return jax.vmap(self.value_and_grad,
                        in_axes=(0, None, None, None))(z, args, kwargs, rng_key)

    def batch_score(self, z, args=(), kwargs=None, rng_key=None):
        return self.batch_value_and_grad(z, args, kwargs, rng_key)[1]

    def score_fn(self, args=(), kwargs=None) -> Callable:
        """``(z, rng_key) -> (log_density, score)`` batched over rows; what engine cores take."""
        return lambda z, rng_key=None: self.batch_value_and_grad(z, args, kwargs, rng_key)

    def constrained_log_density(self, params: dict, args=(), kwargs=None, rng_key=None):
        """Log joint density at *constrained* site values (no transform Jacobian)."""
        from numpyro.infer.util import log_density as numpyro_log_density

        kwargs = {} if kwargs is None else kwargs
        model = self._model_with_plates(rng_key)
        return numpyro_log_density(model, args, kwargs, params)[0]

    # ------------------------------------------------------------------ constrain
    def constrain(self, z, args=(), kwargs=None):
        """Flat unconstrained ``z`` (one point) -> constrained site dict incl. deterministic
        sites."""
        kwargs = {} if kwargs is None else kwargs
        model = self._model_with_plates(None)
        return constrain_fn(model, args, kwargs, self.unflatten(z), return_deterministic=True)

    def constrain_batch(self, z, args=(), kwargs=None):
        return jax.vmap(self.constrain, in_axes=(0, None, None))(z, args, kwargs)

    def log_likelihood(self, z, args=(), kwargs=None, factors: bool = False):
        """Pointwise log-likelihood of each observed site at each row of ``z`` (n, d); with
        ``factors``, the ``numpyro.factor`` terms too (they are not data: ``az.loo`` wants one
        array per observation, so they are left out by default)."""
        kwargs = {} if kwargs is None else kwargs
        samples = self.constrain_batch(z, args, kwargs)
        samples = {k: samples[k] for k in self.site_names}
        ll = log_likelihood(self._model_with_plates(None), samples, *args, **kwargs)
        keep = self.observed_sites + (self.factor_sites if factors else ())
        return {k: v for k, v in ll.items() if k in keep}

    def observed_values(self, args=(), kwargs=None) -> dict:
        kwargs = {} if kwargs is None else kwargs
        tr = _trace_model(self._model_with_plates(None), jax.random.key(0), args, kwargs)
        return {k: tr[k]["value"] for k in self.observed_sites if k in tr}

    # ------------------------------------------------------------------ initialisation
    def init_particles(self, rng_keys, args=(), kwargs=None, init_strategy=init_to_uniform):
        """One valid initial point per key, by NumPyro's own search.

        Returns ``(z (n, d), is_valid (n,))``; traceable (no host sync).
        """
        kwargs = {} if kwargs is None else kwargs
        model = self._model_with_plates(None)

        def one(key):
            (params, _, _), ok = find_valid_initial_params(
                key, model, init_strategy=init_strategy, model_args=args,
                model_kwargs=kwargs, prototype_params=self.prototype,
            )
            return self.flatten(params), ok

        with _model_under_jit():
            return jax.vmap(one)(rng_keys)

    def input_dependent_supports(self, args=(), kwargs=None) -> tuple[str, ...]:
        """Latent sites whose support depends on the model's array inputs or on other latent sites.

        E.g. ``Uniform(0, jnp.max(y))`` or ``Uniform(a, a + 1)`` with ``a`` latent. Found by
        tracing the model with its rng key and array inputs abstract and following which
        support parameters (bounds) depend on them. NumPyro's own transforms follow such
        supports at every evaluation; `supports` (fixed when the bridge was built) does not,
        so engines that key on `supports` (the mirror maps) refuse these sites. Returns ``()``
        if the model cannot be traced this way (the engines' own run reports that).
        """
        kwargs = {} if kwargs is None else kwargs
        dynamic, static, treedef, _ = split_static_args(args, kwargs)
        owners: list[str] = []

        def bounds(key, dyn):
            a, kw = merge_static_args(dyn, static, treedef)
            tr = _trace_model(self._model_with_plates(None), key, a, kw)
            out = []
            owners.clear()
            for name in self.site_names:
                support = tr[name]["fn"].support
                while hasattr(support, "base_constraint"):  # constraints.independent
                    support = support.base_constraint
                for leaf in jax.tree.leaves(list(vars(support).values())):
                    if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
                        owners.append(name)
                        out.append(leaf)
            return out

        try:
            jaxpr = jax.make_jaxpr(bounds)(jax.random.key(0), dynamic).jaxpr
        except Exception:  # the model does not trace abstractly: nothing to say here
            return ()
        dependent = set(jaxpr.invars)
        for eqn in jaxpr.eqns:
            if any(type(v).__name__ != "Literal" and v in dependent for v in eqn.invars):
                dependent.update(eqn.outvars)
        found = [name for name, v in zip(owners, jaxpr.outvars)
                 if type(v).__name__ != "Literal" and v in dependent]
        return tuple(dict.fromkeys(found))

    def check_finite(self, z, args=(), kwargs=None):
        """Raise ``ValueError`` naming the sites whose value or log density is not finite at ``z``.

        Used after initialisation fails: NumPyro only says "cannot find valid initial
        parameters"; we say which site is to blame.
        """
        kwargs = {} if kwargs is None else kwargs
        values = self.constrain(z, args, kwargs)
        model = handlers.substitute(self._model_with_plates(None),
                                    data={k: values[k] for k in self.site_names})
        tr = _trace_model(model, jax.random.key(0), args, kwargs)
        bad = []
        for name, site in tr.items():
            if site["type"] != "sample":
                continue
            value_ok = bool(jnp.all(jnp.isfinite(site["value"])))
            lp = site["fn"].log_prob(site["value"])
            lp_ok = bool(jnp.all(jnp.isfinite(lp)))
            if not (value_ok and lp_ok):
                kind = "observed" if site["is_observed"] else "latent"
                what = "value" if not value_ok else "log density"
                bad.append(f"{name!r} ({kind}, non-finite {what})")
        grad = jax.grad(self.log_density)(z, args, kwargs)
        if not bad and not bool(jnp.all(jnp.isfinite(grad))):
            grad_sites = self.unflatten(grad)
            bad = [f"{k!r} (non-finite gradient)" for k, g in grad_sites.items()
                   if not bool(jnp.all(jnp.isfinite(g)))]
        if bad:
            raise ValueError(
                "the model's log density is not finite at the initial point; sites to blame: "
                + ", ".join(bad)
                + ". Check the observed data lie in each distribution's support and that "
                "parameters (scales, concentrations) are valid."
            )
        raise ValueError(
            "the model's log density is not finite at the initial point, but no single site "
            "could be blamed; check the model."
        )



def _batch_value_and_grad(bridge, args, kwargs, z):
    return bridge.batch_value_and_grad(z, args, kwargs)


def _constrain_batch(bridge, args, kwargs, z):
    return bridge.constrain_batch(z, args, kwargs)


def _eval_closed(closed, *args):
    return jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *args)
