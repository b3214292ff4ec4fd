"""numpyro-gflow: gradient-flow inference engines for NumPyro."""

from numpyro_gflow import diagnostics, kernels, optim
from numpyro_gflow.bridge import ModelBridge
from numpyro_gflow.kernels import IMQKernel, RBFKernel
from numpyro_gflow.result import InferenceResult
from numpyro_gflow.engine import NonFiniteError
from numpyro_gflow.checkpoint import load_state, save_state
from numpyro_gflow.data import StreamedData
from numpyro_gflow.svgd import SVGD
from numpyro_gflow.coin import CoinKSDD, CoinSVGD, KSDD
from numpyro_gflow.lawgd import CoinLAWGD
from numpyro_gflow.fbgvi import FBGVI
from numpyro_gflow.isomix import IsoGaussianMixtureVI
from numpyro_gflow.mirror import SVMD, SVNG, CoinMSVGD, MSVGD
from numpyro_gflow.mixflow import MixFlow, MixFlowKernel

__all__ = ["ModelBridge", "InferenceResult", "NonFiniteError", "save_state", "load_state", "StreamedData", "SVGD", "CoinSVGD", "KSDD", "CoinKSDD", "CoinLAWGD", "MSVGD", "CoinMSVGD", "SVMD", "SVNG", "IsoGaussianMixtureVI", "FBGVI", "MixFlow", "MixFlowKernel", "RBFKernel", "IMQKernel", "kernels", "optim", "diagnostics"]
__version__ = "0.1.0.dev0"
