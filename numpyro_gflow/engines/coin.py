"""Learning-rate-free particle engines: Coin SVGD, KSD descent and Coin KSDD.

Sharrock & Nemeth, "Coin Sampling: Gradient-Based Bayesian Inference without Learning Rates"
(ICML 2023) replace the step size of a particle gradient flow by coin betting
(`numpyro_gflow.optim.coin_betting`): each coordinate of each particle bets a fraction of
its accumulated "wealth" on the direction the flow proposes. The cores are those of SVGD and
KSD descent; only the update rule differs, so these classes are thin.
"""

from __future__ import annotations

import optax
from numpyro.infer.initialization import init_to_uniform

from numpyro_gflow.core import ksdd as ksdd_core
from numpyro_gflow.core.kernels import IMQKernel, Kernel
from numpyro_gflow.core.optim import as_optimizer, coin_betting
from numpyro_gflow.engines.base import ParticleEngine
from numpyro_gflow.engines.svgd import SVGD

__all__ = [
    "CoinSVGD",
    "KSDD",
    "CoinKSDD",
]


class CoinSVGD(SVGD):
    """SVGD without a learning rate: the SVGD direction drives coin betting.

    Args:
        model: a NumPyro model with continuous latent sites.
        num_particles: particles for `run` (``MCMC`` takes ``num_chains``).
        kernel: as `SVGD`'s: default RBF with bandwidth ``2 d`` in the Laplace-whitened
            coordinates (`ParticleEngine.kernel_for`), the median heuristic (the paper's) with
            ``precondition=None``; or IMQ. Its ``block_size`` sets dense or memory-blocked
            kernel sums, as for `SVGD`.
        alpha: the betting rule's ``alpha`` (0, the paper's default; they use 100 for BNNs).
        init_strategy: NumPyro init strategy per particle.
        precondition: ``"laplace"`` (default) or ``None``: as `SVGD`'s (the bets are then
            made in coordinates where the posterior's scale is ~1, which is what a
            learning-rate-free method needs: on posteriordb's arK, whose sds are 0.008-0.09,
            CoinKSDD in NumPyro's raw coordinates ended 217 sds off).

    There is no step size argument. Cost per step: as SVGD (n gradients, O(n^2 d)). Bets are
    made relative to the initial particles, so a poor start costs more steps, not divergence;
    particles that become non-finite restart from their initial point.
    """

    # coin betting restarts particles whose values turn non-finite (the paper's guard), so a
    # step whose objective is NaN is recoverable: only a non-finite state stops the run
    tolerates_non_finite_objective = True

    def __init__(self, model, *, num_particles: int | None = 100, kernel: Kernel | None = None,
                 alpha: float = 0.0, trace_ksd: bool = False, init_strategy=init_to_uniform,
                 precondition: str | None = "laplace"):
        super().__init__(model, num_particles=num_particles, optimizer=coin_betting(alpha),
                         kernel=kernel, trace_ksd=trace_ksd,
                         init_strategy=init_strategy, precondition=precondition)


class KSDD(ParticleEngine):
    """Kernel Stein discrepancy descent (Korba et al. 2021) on a NumPyro model.

    Args:
        model: a NumPyro model with continuous latent sites.
        num_particles: particles for ``run`` (``MCMC`` takes ``num_chains``).
        step_size: None (default): L-BFGS on ``F`` (``optax.lbfgs``: memory 10, zoom line
            search on ``F`` itself), the optimizer the paper recommends, with no step to tune;
            or a plain gradient-descent step (``x -= step_size * grad F``), as in the paper's
            step-size experiments; or pass ``optimizer=`` (any optax transformation; it gets
            ``grad F``, and a line-search one also ``F``).
        optimizer: an optax ``GradientTransformation`` instead of ``step_size``.
        init_strategy: NumPyro init strategy per particle.
        precondition: ``"laplace"`` (default) or ``None``: as `SVGD`'s (the bets are then
            made in coordinates where the posterior's scale is ~1, which is what a
            learning-rate-free method needs: on posteriordb's arK, whose sds are 0.008-0.09,
            CoinKSDD in NumPyro's raw coordinates ended 217 sds off).
        kernel: default (`ParticleEngine.kernel_for`): in the Laplace-whitened coordinates an
            RBF kernel of fixed bandwidth ``2 d`` (the squared distance of two posterior draws
            there); with ``precondition=None`` the paper's IMQ (``c = 1, beta = -1/2``, unit
            scale), with which the KSD detects non-convergence (Gorham & Mackey 2017). Either
            way the kernel is fixed, so ``F`` is one function across steps and plain descent
            with a small step decreases it monotonically (measured: on a d = 5 Gaussian, 100
            particles, step 1.0, every one of 2000 steps decreased it; the median-heuristic RBF
            changes ``F`` at each step and is not monotone). Why ``2 d`` in the whitened
            coordinates: the unit-scale IMQ is narrower than the posterior there, and KSD
            descent's particles sat inside it (posteriordb, 2000 steps, max mean error in sds /
            max sd error: kidiq 0.037 / 11 % -> 0.017 / 1.4 %, mesquite 0.22 / 22 % ->
            0.046 / 6 %; conjugate Gaussian sd error 11 % -> 1.7 %).

    The objective traced per step is ``ksd_sq`` (squared KSD of the particles, V-statistic).
    Cost per step: n scores plus their reverse-mode derivative (about one Hessian-vector
    product per particle) and O(n^2 d) kernel work. Failure modes (from the paper): particles
    can stall at spurious stationary points of the KSD for non log-concave targets, and too
    large a step makes it oscillate; start it from a reasonable spread.
    """

    traceable_init = True

    objective = "ksd_sq"

    paper_kernel = IMQKernel()

    def __init__(self, model, *, num_particles: int | None = 100, step_size: float | None = None,
                 optimizer: optax.GradientTransformation | None = None,
                 kernel: Kernel | None = None, init_strategy=init_to_uniform,
                 precondition: str | None = "laplace"):
        super().__init__(model, num_particles=num_particles, init_strategy=init_strategy,
                         precondition=precondition)
        if step_size is None and optimizer is None:
            # the paper's own choice: L-BFGS on F with a line search (no step to tune)
            self.optimizer = optax.lbfgs()
        else:
            self.optimizer = as_optimizer(step_size, optimizer, default=optax.sgd)
        self.kernel = self._checked_kernel(kernel)

    def _core_init(self, particles, rng_key, target):
        return ksdd_core.init(particles, self.optimizer, rng_key)

    def _core_step(self, state, target):
        return ksdd_core.step(state, target.score_fn(), self._step_kernel(state.particles, target),
                               self.optimizer)


class CoinKSDD(KSDD):
    """KSD descent driven by coin betting: no step size (Sharrock & Nemeth 2023).

    Args:
        model: a NumPyro model with continuous latent sites.
        num_particles: particles for ``run``.
        kernel: as `KSDD`'s (RBF of bandwidth ``2 d`` in the whitened coordinates; IMQ with
            ``precondition=None``).
        alpha: the betting rule's ``alpha`` (0 by default).
        init_strategy: NumPyro init strategy per particle.
        precondition: ``"laplace"`` (default) or ``None``: as `SVGD`'s (the bets are then
            made in coordinates where the posterior's scale is ~1, which is what a
            learning-rate-free method needs: on posteriordb's arK, whose sds are 0.008-0.09,
            CoinKSDD in NumPyro's raw coordinates ended 217 sds off).
    """

    # coin betting restarts particles whose values turn non-finite (the paper's guard), so a
    # step whose objective is NaN is recoverable: only a non-finite state stops the run
    tolerates_non_finite_objective = True

    def __init__(self, model, *, num_particles: int | None = 100, kernel: Kernel | None = None,
                 alpha: float = 0.0, init_strategy=init_to_uniform,
                 precondition: str | None = "laplace"):
        super().__init__(model, num_particles=num_particles, optimizer=coin_betting(alpha),
                         kernel=kernel, init_strategy=init_strategy, precondition=precondition)
