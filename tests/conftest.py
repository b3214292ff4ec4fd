import atexit
import os
import shutil
import tempfile
from pathlib import Path

# One compilation cache for the session and its child processes (JAX's persistent cache, in a
# fresh folder removed at exit): the many engines the tests build on the same few models
# compile the same programs, and XLA's part of that is then done once (measured: -15 % on
# the determinism and engine-contract tests). Tracing still happens per engine, so what a
# test measures about compilation (the compile counts of test_svgd) is unchanged. Every
# program is kept, the small ones too: the two pytest-xdist workers and the example
# notebooks' processes compile many of the same op-by-op programs (NumPyro's MCMC and SVI
# set-up, ~100-200 per example). Measured with 2 workers on the determinism, contract,
# reliability, validation and isomix tests: 149 -> 132 s (min compile time 0.2 s -> 0); the
# seven examples in a row 162 -> 139 s.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="gflow-test-jax-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402

import background  # noqa: E402
import numpyro_gflow.diagnose  # noqa: E402

# run() checks its result by default (numpyro_gflow.diagnose); here only where a test asks
# (run(..., diagnose=True), tests/engines/test_diagnose.py): the checks compile a few more
# programs per model, +14 % on the engine-contract and determinism tests
numpyro_gflow.diagnose.ON_RUN = False

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")))


def pytest_configure(config):
    config.addinivalue_line("markers", "background(job): the test's child process is the named "
                            "job of tests/background.py, started early on a worker thread")


@pytest.fixture(scope="session", autouse=True)
def _background_jobs(request, tmp_path_factory):
    # the selected tests' child processes, in the order the tests run (tests/background.py).
    # Under pytest-xdist (``make test`` runs 2 workers) each worker collects every test but
    # runs only some, and the workers already keep both cores busy: the jobs run in their tests
    names = [] if os.environ.get("PYTEST_XDIST_WORKER") else [
        m.args[0] for item in request.session.items for m in item.iter_markers("background")]
    background.WORKER.start(names, tmp_path_factory)
    yield
    background.WORKER.stop()


def pytest_terminal_summary(terminalreporter):
    lines = background.summary_lines()
    if lines:
        terminalreporter.write_sep("-", "child processes (tests/background.py)")
        for line in lines:
            terminalreporter.write_line(line)


def linreg_model(X, y=None):
    w = numpyro.sample("w", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.deterministic("w_norm", jnp.linalg.norm(w))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, sigma), obs=y)


def linreg_arrays():
    """The data of `linreg_model`: X (50, 3), y (50,)."""
    k1, k2 = jax.random.split(jax.random.key(1))
    X = jax.random.normal(k1, (50, 3))
    y = X @ jnp.array([1.0, -0.5, 0.2]) + 0.5 * jax.random.normal(k2, (50,))
    return X, y


@pytest.fixture(scope="session")
def linreg_data():
    return linreg_arrays()


class ConjugateGaussian:
    """x ~ N(0, diag(tau^2)), y_i ~ N(x, diag(s^2)) for i < m: the posterior is Gaussian, known."""

    tau = jnp.array([1.0, 2.0, 0.5, 1.5, 3.0])
    s = jnp.array([1.0, 3.0, 1.0, 2.0, 4.0])

    def __init__(self, m=10, seed=3):
        truth = jnp.array([0.5, -1.0, 0.2, 1.0, 2.0])
        self.y = truth + self.s * jax.random.normal(jax.random.key(seed), (m, 5))
        precision = 1 / self.tau**2 + m / self.s**2
        self.post_mean = (self.y.sum(0) / self.s**2) / precision
        self.post_sd = 1 / jnp.sqrt(precision)

    def model(self, y):
        x = numpyro.sample("x", dist.Normal(0.0, self.tau).to_event(1))
        with numpyro.plate("obs", y.shape[0]):
            numpyro.sample("y", dist.Normal(x, self.s).to_event(1), obs=y)


@pytest.fixture(scope="session")
def conjugate():
    return ConjugateGaussian()


@pytest.fixture(scope="session")
def linreg_nuts(linreg_data):
    # NUTS draws of linreg_model on these data, cached (tests/data/make_linreg_nuts.py: 4 chains
    # x 25,000 draws, every 25th kept: 4000 nearly independent draws, so the Monte Carlo error
    # of their means is about 1/sqrt(4000) = 0.016 posterior sd); the data they were made from
    # are in the file, and must still be what linreg_arrays() makes
    with np.load(Path(__file__).parent / "data" / "linreg_nuts_draws.npz") as f:
        X, y = linreg_data
        np.testing.assert_allclose(f["X"], np.asarray(X), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(f["y"], np.asarray(y), rtol=1e-6, atol=1e-6)
        return {k: f[k] for k in ("w", "sigma", "w_norm")}


class MinibatchNormalMean:
    """mu ~ N(0, 10^2), x_i ~ N(mu, 2^2), i < 500, fitted with mini-batches of 50: known
    posterior."""

    N, subsample_size = 500, 50

    def __init__(self):
        self.x = jax.random.normal(jax.random.key(0), (self.N,)) * 2.0 + 1.5
        precision = self.N / 4.0 + 1 / 100
        self.post_mean = float(self.x.sum() / 4.0 / precision)
        self.post_sd = float(precision**-0.5)

    def model(self, x):
        mu = numpyro.sample("mu", dist.Normal(0, 10))
        with numpyro.plate("data", self.N, subsample_size=self.subsample_size) as idx:
            numpyro.sample("x", dist.Normal(mu, 2.0), obs=x[idx])


@pytest.fixture(scope="session")
def minibatch_target():
    return MinibatchNormalMean()
