"""numpyro-gflow: gradient-flow inference engines for NumPyro.

Layers, bottom up: `bridge` (NumPyro model -> unconstrained log density, score, constrain),
`core` (pure JAX algorithms), `engines` (the NumPyro-facing engines on one base), `result`
(one result type), `diagnose` (does a result describe the posterior?), `report` (the
`summary` table), `diagnostics`.
"""

from numpyro_gflow import core, diagnose, diagnostics
from numpyro_gflow.bridge import ModelBridge
from numpyro_gflow.checkpoint import load_state, save_state
from numpyro_gflow.compilation import enable_compilation_cache
from numpyro_gflow.core import kernels, optim
from numpyro_gflow.core.kernels import IMQKernel, RBFKernel
from numpyro_gflow.data import StreamedData
from numpyro_gflow.diagnose import UnreliableResultWarning
from numpyro_gflow.engines import (
    FBGVI,
    KSDD,
    SVGD,
    SVMD,
    SVNG,
    CoinKSDD,
    CoinLAWGD,
    CoinMSVGD,
    CoinSVGD,
    IsoGaussianMixtureVI,
    MixFlow,
    MixFlowKernel,
    MSVGD,
    NonFiniteError,
)
from numpyro_gflow.report import ResultSummary, print_summary, summary
from numpyro_gflow.result import InferenceResult

__all__ = [
    "CoinKSDD",
    "CoinLAWGD",
    "CoinMSVGD",
    "CoinSVGD",
    "FBGVI",
    "IMQKernel",
    "InferenceResult",
    "IsoGaussianMixtureVI",
    "KSDD",
    "MSVGD",
    "MixFlow",
    "MixFlowKernel",
    "ModelBridge",
    "NonFiniteError",
    "RBFKernel",
    "ResultSummary",
    "SVGD",
    "SVMD",
    "SVNG",
    "StreamedData",
    "UnreliableResultWarning",
    "core",
    "diagnose",
    "diagnostics",
    "enable_compilation_cache",
    "kernels",
    "load_state",
    "optim",
    "print_summary",
    "save_state",
    "summary",
]
__version__ = "0.1.0.dev0"
