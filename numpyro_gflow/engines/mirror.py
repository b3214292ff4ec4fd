"""Mirror maps for constrained sites, and the mirrored Stein samplers MSVGD and Coin MSVGD.

Shi, Liu & Mackey, "Sampling with Mirrored Stein Operators" (ICLR 2022); Sharrock, Mackey &
Nemeth, "Learning Rate Free Sampling in Constrained Domains" (NeurIPS 2023).

A mirror map ``psi`` on a site's domain gives a dual variable ``eta = grad psi(theta)`` in
R^k; particles move in ``eta`` and are reported as ``theta = grad psi*(eta)``, exactly on the
domain. The dual target is the push-forward ``p_H(eta) = p(theta(eta)) |det d theta / d eta|``,
so its score is the paper's ``grad^2 psi(theta)^{-1} grad log p(theta) + grad_eta log det
grad^2 psi*(eta)``; we get it by autodiff of ``log p(theta(eta)) + log det``, with ``log p`` the
model's joint density at constrained values (NumPyro's ``log_density``). The Jacobian
``d theta / d eta`` is ``grad^2 psi(theta)^{-1}``, the matrix the MSVGD repulsion needs.

Maps, keyed by the site's NumPyro support (each site its own map):

* ``simplex`` -- entropic (negative entropy): ``eta_i = log theta_i - log theta_D`` (first D-1
  coordinates free), ``theta = softmax([eta, 0])``, ``log det = sum_i log theta_i`` (all D).
* ``positive`` -- entropic ``theta log theta - theta``: ``eta = log theta``; ``greater_than(a)``
  (and ``greater_than_eq``) the same shifted: ``eta = log(theta - a)``.
* ``interval(a, b)`` (incl. ``unit_interval``) -- the entropic map of the box scaled to
  ``(a, b)``: ``u = tanh(eta / 2)``, ``theta = a + (b - a)(u + 1) / 2``.
* ``real`` / ``real_vector`` -- identity (MSVGD is then SVGD on that block).
* anything else (ordered vectors, Cholesky factors, ...): NumPyro's own bijection stands in as
  the map for that site (``fallback="numpyro"``, the default), so those coordinates move as in
  SVGD; with ``fallback=None`` such a site is a ``ValueError`` naming it and its constraint.

With ``precondition="laplace"`` (MSVGD's and Coin MSVGD's default) the particles move in
affine coordinates ``u`` of the dual, ``eta = m + W u`` with ``m`` the dual target's mode and
``W W^T`` its inverse Hessian there (`numpyro_gflow.core.msvgd.preconditioned`: still MSVGD,
with the mirror map ``psi*(m + W u)`` and the kernel on ``(J_0 W)^{-1} theta``, ``J_0`` the
Jacobian d theta / d eta at ``m``).
"""

from __future__ import annotations

import functools

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import biject_to, constraints
from numpyro.infer.initialization import init_to_uniform

from numpyro_gflow._validate import check_flag as _check_flag, unit_fraction
from numpyro_gflow.bridge import ModelBridge
from numpyro_gflow.core import msvgd, svmd
from numpyro_gflow.core.kernels import IMQKernel, Kernel
from numpyro_gflow.core.mirror_maps import EntropicBox, EntropicPositive, EntropicSimplex, MirrorMap
from numpyro_gflow.core.msvgd import MirrorEval
from numpyro_gflow.core.optim import as_optimizer, coin_betting, svgd_adagrad
from numpyro_gflow.engines.base import ParticleEngine, Target

__all__ = [
    "CoinMSVGD",
    "MSVGD",
    "MirroredTarget",
    "NumPyroTransformMirror",
    "SVMD",
    "mirror_map_for",
]


class NumPyroTransformMirror(MirrorMap):
    """Fallback: NumPyro's bijection for the support plays the mirror (eta = unconstrained)."""

    name = "numpyro-transform"

    def __init__(self, support):
        self.transform = biject_to(support)

    def to_primal(self, eta):
        return self.transform(eta)

    def to_dual(self, theta):
        return self.transform.inv(theta)

    def log_det(self, eta):
        return jnp.sum(self.transform.log_abs_det_jacobian(eta, self.transform(eta)))

    def free(self, theta):
        # the kernel sees the unconstrained coordinates: plain SVGD on this block
        return self.transform.inv(theta)


def mirror_map_for(site: str, support, fallback: str | None = None) -> MirrorMap:
    """The mirror map for a NumPyro support; ``ValueError`` naming the site if there is none."""
    base = support
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    if base is constraints.real or base is constraints.real_vector:
        return MirrorMap()
    if base is constraints.simplex:
        return EntropicSimplex()
    if base is constraints.positive:
        return EntropicPositive()
    if isinstance(base, constraints.greater_than):   # also greater_than_eq: same interior
        return EntropicPositive(base.lower_bound)
    if (isinstance(base, constraints.interval)
            and not isinstance(base, constraints.integer_interval)):
        return EntropicBox(base.lower_bound, base.upper_bound)
    if fallback == "numpyro":
        return NumPyroTransformMirror(support)
    raise ValueError(
        f"site {site!r} has support {support}, which has no mirror map (supported: real, "
        "positive, greater_than, interval/unit_interval, simplex). Pass fallback='numpyro' (the "
        "default) to use NumPyro's own transform for it."
    )


class MirroredTarget:
    """The model seen in mirror coordinates: flat ``eta`` in R^d, same layout as the bridge's z."""

    def __init__(self, bridge: ModelBridge, fallback: str | None = None):
        self.bridge = bridge
        self.maps = {name: mirror_map_for(name, bridge.supports[name], fallback)
                     for name in bridge.site_names}
        offsets, start = {}, 0
        for name in bridge.site_names:
            size = int(np.prod(bridge.prototype[name].shape))
            offsets[name] = (start, start + size)
            start += size
        self.slices = offsets

    def primal(self, eta) -> dict:
        """Flat dual point -> constrained site dict (exactly on each domain)."""
        parts = self.bridge.unflatten(eta)
        return {k: self.maps[k].to_primal(v) for k, v in parts.items()}

    def to_unconstrained(self, eta):
        """Flat dual point -> NumPyro's flat unconstrained z (for results and postprocessing)."""
        theta = self.primal(eta)
        return self.bridge.flatten({k: biject_to(self.bridge.supports[k]).inv(v)
                                    for k, v in theta.items()})

    def from_unconstrained(self, z):
        theta = {k: biject_to(self.bridge.supports[k])(v)
                 for k, v in self.bridge.unflatten(z).items()}
        return self.bridge.flatten({k: self.maps[k].to_dual(theta[k])
                                    for k in self.bridge.site_names})

    def free_primal(self, eta):
        theta = self.primal(eta)
        return jnp.concatenate([jnp.ravel(self.maps[k].free(theta[k]))
                                for k in self.bridge.site_names])

    def log_density(self, eta, args=(), kwargs=None, rng_key=None):
        parts = self.bridge.unflatten(eta)
        theta = {k: self.maps[k].to_primal(v) for k, v in parts.items()}
        log_det = sum(self.maps[k].log_det(v) for k, v in parts.items())
        return self.bridge.constrained_log_density(theta, args, kwargs, rng_key) + log_det

    def site_jacobian(self, name, eta):
        """d theta_free / d eta for one site at one flat dual point: (k, k)."""
        lo, hi = self.slices[name]
        shape = self.bridge.prototype[name].shape
        m = self.maps[name]
        fn = lambda e: jnp.ravel(m.free(m.to_primal(e.reshape(shape))))  # noqa: E731
        return jax.jacfwd(fn)(eta[lo:hi])

    def eval_fn(self, args=(), kwargs=None) -> Callable:
        """``(eta (n, d), rng_key) -> MirrorEval``: what the mirrored cores take."""
        def evaluate(eta, rng_key=None):
            logp, score = jax.vmap(jax.value_and_grad(self.log_density), (0, None, None, None))(
                eta, args, kwargs, rng_key)
            primal = jax.vmap(self.free_primal)(eta)
            jacs = tuple(
                None if type(self.maps[k]) is MirrorMap
                else jax.vmap(lambda e, k=k: self.site_jacobian(k, e))(eta)
                for k in self.bridge.site_names)
            return MirrorEval(logp, score, primal, jacs)
        return evaluate


class _MirroredEngine(ParticleEngine):
    """Particles live in mirror coordinates; results and MCMC samples are NumPyro's."""

    # the supports are checked before compiling (`_check_target`): the init is pure
    traceable_init = True

    def __init__(self, model, *, num_particles, init_strategy, fallback, precondition=None):
        super().__init__(model, num_particles=num_particles, init_strategy=init_strategy,
                         precondition=precondition)
        if fallback not in (None, "numpyro"):
            raise ValueError(f"fallback must be None or 'numpyro', got {fallback!r}")
        self.fallback = fallback

    def _mirror(self, bridge) -> MirroredTarget:
        return MirroredTarget(bridge, self.fallback)

    def _check_target(self, target: Target):
        """Every site has a mirror map (or the fallback), and the mirror maps are fixed from
        the first trace: refuse supports that move."""
        self._mirror(target.bridge)
        moving = target.bridge.input_dependent_supports(target.model_args, target.model_kwargs)
        if moving:
            name = moving[0]
            raise ValueError(
                f"site {name!r} has support {target.bridge.supports[name]} whose bounds depend on "
                f"the model's inputs or on other latent sites (all such sites: {list(moving)}). "
                f"{type(self).__name__} fixes each site's mirror map when the model is first "
                "traced, so it needs supports with fixed bounds. Use SVGD or CoinSVGD (NumPyro's "
                "transforms follow such supports), or reparameterise, e.g. u ~ Uniform(0, 1) "
                "and b = low + (high - low) * u as a deterministic site."
            )

    def _eval(self, target: Target):
        """The mirrored cores' ``eval_fn`` and the sites' coordinate slices, for this target
        (in the affine coordinates ``target.coords`` of the dual where it has them)."""
        mirror = self._mirror(target.bridge)
        slices = tuple(mirror.slices[k] for k in target.bridge.site_names)
        eval_fn = mirror.eval_fn(target.model_args, target.model_kwargs)
        if target.coords is None:
            return eval_fn, slices
        return msvgd.preconditioned(eval_fn, slices, target.coords.shift, target.coords.scale)

    def _coordinates_kind(self):
        return ("mirror", self.fallback)

    def _particle_log_density(self, target: Target):
        mirror = self._mirror(target.bridge)
        return lambda eta: mirror.log_density(eta, target.model_args, target.model_kwargs)

    def _from_unconstrained(self, z, bridge):
        # compiled once per model (`ModelBridge.program`), not op by op at every run
        return bridge.program(("mirror_from", self.fallback),
                              functools.partial(_mirror_points, "from", self.fallback))(z)

    def _to_unconstrained(self, particles, bridge):
        return bridge.program(("mirror_to", self.fallback),
                              functools.partial(_mirror_points, "to", self.fallback))(particles)

    def _result_points(self, state, bridge):
        if not hasattr(state, "coords"):
            return self._to_unconstrained(state.particles, bridge)
        # the coordinates' map and the mirror's inverse in one program
        return bridge.program(("mirror_result", self.fallback),
                              functools.partial(_mirror_result, self.fallback))(
            state.coords, state.core.particles)

    def _constrain_one(self, bridge, particle, args, kwargs):
        return bridge.constrain(self._mirror(bridge).to_unconstrained(particle), args, kwargs)


class MSVGD(_MirroredEngine):
    """Mirrored SVGD (Shi, Liu & Mackey 2022) on a NumPyro model with constrained sites.

    Args:
        model: a NumPyro model; sites whose support has a mirror map (simplex, positive,
            greater_than, interval) move in its dual, the others by NumPyro's transform.
        num_particles: particles for ``run``.
        step_size: step size of the default optimizer (the SVGD reference AdaGrad), or pass an
            optax ``optimizer=`` (the authors' constrained runs use RMSprop, lr 0.1).
        kernel: on the (whitened) primal coordinates; default RBF with bandwidth ``2 d`` with
            ``precondition="laplace"`` (`ParticleEngine.kernel_for`), the median heuristic in
            the plain dual; or IMQ.
        fallback: ``"numpyro"`` (default): NumPyro's transform for sites without a mirror map;
            ``None``: such a site is a ``ValueError``.
        precondition: ``"laplace"`` (default): the particles move in affine coordinates of the
            dual, ``eta = m + W u``, with ``m`` the dual target's mode and ``W W^T`` the inverse
            Hessian there (`SVGD`'s Laplace start and whitening, for the dual), starting
            uniform in ``(-2, 2)`` of ``u``; the method is still MSVGD, with mirror map
            ``psi*(m + W u)`` and the kernel on the primal whitened by the same scale (see the
            module docs).
            Without it a posterior whose scales are far from 1 or whose parameters correlate
            strongly is out of reach of one step size (posteriordb's earnings regression: 80
            sds off). ``None``: the paper's algorithm in the dual coordinates.

    Cost per step: n gradients of the dual density, n site Jacobians (k x k per site of size
    k), O(n^2 d + n^2 k^2) kernel work.
    """

    objective = "stein_sq_norm"

    def __init__(self, model, *, num_particles: int | None = 100, step_size: float | None = None,
                 optimizer=None, kernel: Kernel | None = None, fallback: str | None = "numpyro",
                 trace_ksd: bool = False, init_strategy=init_to_uniform,
                 precondition: str | None = "laplace"):
        super().__init__(model, num_particles=num_particles, init_strategy=init_strategy,
                         fallback=fallback, precondition=precondition)
        self.trace_ksd = _check_flag("trace_ksd", trace_ksd)
        if step_size is None and optimizer is None:
            step_size = 0.05
        self.optimizer = as_optimizer(step_size, optimizer, default=svgd_adagrad)
        self.kernel = self._checked_kernel(kernel)

    def _core_init(self, particles, rng_key, target: Target):
        return msvgd.init(particles, self.optimizer, rng_key)

    def _core_step(self, state, target):
        eval_fn, slices = self._eval(target)
        return msvgd.step(state, eval_fn, slices, self._step_kernel(state.particles, target),
                          self.optimizer,
                          with_ksd=self.trace_ksd)


class CoinMSVGD(MSVGD):
    """Mirrored SVGD driven by coin betting: no step size (Sharrock, Mackey & Nemeth 2023)."""

    # coin betting restarts particles whose values turn non-finite (the paper's guard), so a
    # step whose objective is NaN is recoverable: only a non-finite state stops the run
    tolerates_non_finite_objective = True

    def __init__(self, model, *, num_particles: int | None = 100, kernel: Kernel | None = None,
                 alpha: float = 0.0, fallback: str | None = "numpyro", trace_ksd: bool = False,
                 init_strategy=init_to_uniform, precondition: str | None = "laplace"):
        super().__init__(model, num_particles=num_particles, optimizer=coin_betting(alpha),
                         kernel=kernel, fallback=fallback, trace_ksd=trace_ksd,
                         init_strategy=init_strategy, precondition=precondition)


class SVMD(MSVGD):
    """Stein variational mirror descent (Shi, Liu & Mackey 2022) with the paper's adaptive kernel.

    As `MSVGD` (same arguments, same mirror maps), but the kernel adapts to the particles and
    the geometry: ``K_psi(th, th') = E_z[k_half(th, z) grad^2 psi(z) k_half(z, th')]``, with
    ``k_half`` the Nystrom square root of the base kernel over the top eigenpairs holding
    ``eigen_threshold`` (0.98) of the Gram spectrum (jitter 1e-5). With a constant kernel it
    reduces to mirror descent. Default base kernel: in the Laplace coordinates RBF with
    bandwidth ``2 d`` (`ParticleEngine.kernel_for`; posteriordb, 2000 steps: mesquite
    0.12 sd / 15 % -> 0.049 / 8 %, arK 0.093 / 10 % -> 0.056 / 6 %); in the plain dual IMQ
    with the median heuristic, as in the authors' code.

    ``precondition`` defaults to ``"auto"`` here: ``"laplace"`` (as MSVGD) unless a site lies on
    a simplex, then ``None`` (the paper's dual coordinates). SVMD weights its kernel by
    ``grad^2 psi``, which grows like ``1 / theta`` towards a simplex's faces, and the Laplace
    start (+-2 sds of the dual mode) puts particles deep into those corners, where the weighted
    directions are 1e6 times larger than at a uniform start (a sparse Dirichlet: diverged at
    step 417, where the dual start converges). Elsewhere the Laplace coordinates are what make
    SVMD usable on models whose scales or correlations are far from 1 (posteriordb, 2000
    steps, max mean error in reference sds / max sd error: earnings regression 0.38 / 18 % with
    them, 1700 sds in the dual; ARMA(1, 1) 0.05 / 6 %, non-finite in the dual; Lotka-Volterra
    0.07 / 31 %, non-finite in the dual; kidiq 0.22 / 29 %, 88 sds in the dual).

    Cost per step: MSVGD's plus an n x n eigen-decomposition, O(n^2 d J) for J kept eigenpairs,
    and a k x k solve per particle and site.
    """

    def __init__(self, model, *, num_particles: int | None = 100, step_size: float | None = None,
                 optimizer=None, kernel: Kernel | None = None, eigen_threshold: float = 0.98,
                 fallback: str | None = "numpyro", trace_ksd: bool = False,
                 init_strategy=init_to_uniform, precondition: str | None = "auto"):
        super().__init__(model, num_particles=num_particles, step_size=step_size,
                         optimizer=optimizer,
                         kernel=kernel,
                         fallback=fallback, trace_ksd=trace_ksd, init_strategy=init_strategy,
                         precondition=precondition)
        self.eigen_threshold = unit_fraction("eigen_threshold", eigen_threshold)

    precondition_choices = ("auto", "laplace", None)

    paper_kernel = IMQKernel(bandwidth="median")

    def _resolved_precondition(self, target: Target) -> str | None:
        if self.precondition != "auto":
            return self.precondition
        maps = self._mirror(target.bridge).maps.values()
        return None if any(isinstance(m, EntropicSimplex) for m in maps) else "laplace"

    def _core_step(self, state, target):
        eval_fn, slices = self._eval(target)
        return svmd.step(state, eval_fn, slices, self._step_kernel(state.particles, target),
                         self.optimizer,
                         self.eigen_threshold, with_ksd=self.trace_ksd)


def _mirror_points(which, fallback, bridge, args, kwargs, points):
    """(`ModelBridge.program`) NumPyro's unconstrained points -> the mirrored engines'
    particles (``which="from"``), or back (``"to"``)."""
    mirror = MirroredTarget(bridge, fallback)
    one = mirror.from_unconstrained if which == "from" else mirror.to_unconstrained
    return jax.vmap(one)(points)


def _mirror_result(fallback, bridge, args, kwargs, coords, particles):
    return _mirror_points("to", fallback, bridge, args, kwargs, coords.to_z(particles))
