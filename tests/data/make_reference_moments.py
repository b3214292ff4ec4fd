"""Writes logistic_nuts_moments.npz and eight_schools_nuts_moments.npz: the NUTS posterior means
and sds that tests/engines/test_isomix_realdata.py and tests/engines/test_fbgvi.py compare against.

They are computed from the benchmark suite's cached reference draws
(``benchmarks/references/<model>.npz``, made by ``python -m benchmarks.references``; read here as
files, nothing is imported from benchmarks), exactly as the tests computed them from the draws
before (float32, the same expressions), so the tests need neither that folder nor a NUTS run.
Each file keeps the draws' ``__info__`` (how they were made) and ``num_draws``.

    .venv/bin/python tests/data/make_reference_moments.py
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCES = HERE.parents[1] / "benchmarks" / "references"


def logistic(ref):
    """(b, w[0..29]) per draw, as tests/engines/test_isomix_realdata.py's ``flat``."""
    return np.column_stack([np.asarray(ref["b"]), np.asarray(ref["w"])]), "(b, w[0], ..., w[29])"


def eight_schools(ref):
    """(mu, log tau, theta_tilde[0..7]) per draw, as tests/engines/test_fbgvi.py's ``flat``."""
    theta = np.column_stack([np.asarray(ref["mu"]), np.log(np.asarray(ref["tau"])),
                             np.asarray(ref["theta_tilde"])])
    return theta, "(mu, log tau, theta_tilde[0], ..., theta_tilde[7])"


if __name__ == "__main__":
    for name, flat in (("logistic", logistic), ("eight_schools", eight_schools)):
        with np.load(REFERENCES / f"{name}.npz") as ref:
            info = json.loads(str(ref["__info__"]))
            theta, columns = flat(ref)
        info["moments_of"] = columns
        info["moments_from"] = f"benchmarks/references/{name}.npz"
        np.savez(HERE / f"{name}_nuts_moments.npz", mean=theta.mean(0), sd=theta.std(0),
                 num_draws=np.int64(theta.shape[0]), __info__=json.dumps(info))
        print(f"{name}: {theta.shape[0]} draws, {theta.shape[1]} columns {columns}")
