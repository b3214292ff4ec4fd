"""The engine layer: each engine binds a pure core (`numpyro_gflow.core`) to a NumPyro model
through the bridge, on the shared base in `numpyro_gflow.engines.base`."""

from numpyro_gflow.engines.base import NonFiniteError, ParticleEngine, Target
from numpyro_gflow.engines.coin import KSDD, CoinKSDD, CoinSVGD
from numpyro_gflow.engines.fbgvi import FBGVI
from numpyro_gflow.engines.isomix import IsoGaussianMixtureVI
from numpyro_gflow.engines.lawgd import CoinLAWGD
from numpyro_gflow.engines.mirror import SVMD, CoinMSVGD, MSVGD
from numpyro_gflow.engines.mixflow import MixFlow, MixFlowKernel, MixFlowResult
from numpyro_gflow.engines.svgd import SVGD
from numpyro_gflow.engines.svng import SVNG

__all__ = [
    "FBGVI",
    "KSDD",
    "SVGD",
    "SVMD",
    "SVNG",
    "CoinKSDD",
    "CoinLAWGD",
    "CoinMSVGD",
    "CoinSVGD",
    "IsoGaussianMixtureVI",
    "MSVGD",
    "MixFlow",
    "MixFlowKernel",
    "MixFlowResult",
    "NonFiniteError",
    "ParticleEngine",
    "Target",
]
