from .ensemble import UNetEnsemble
from .export import ProbUNetSampler, unstack_hypotheses
from .fcomb import FComb
from .gaussian_encoder import GaussianEncoder
from .init import init_weights_orthogonal
from .mheads import MHeadsUNet
from .prob_unet import ProbUNet, latent_kl, segmentation_to_onehot
from .unet import DeterministicUNet
from .unet_core import ConvBlock, UNetCore, UNetDecoder, UNetEncoder
from .utils import hypotheses_to_labels

__all__ = [
    "ConvBlock",
    "DeterministicUNet",
    "FComb",
    "GaussianEncoder",
    "MHeadsUNet",
    "ProbUNet",
    "ProbUNetSampler",
    "UNetCore",
    "UNetDecoder",
    "UNetEncoder",
    "UNetEnsemble",
    "hypotheses_to_labels",
    "init_weights_orthogonal",
    "latent_kl",
    "segmentation_to_onehot",
    "unstack_hypotheses",
]
