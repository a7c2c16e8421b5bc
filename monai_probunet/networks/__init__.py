from .ensemble import UNetEnsemble
from .export import ProbUNetSampler, unstack_hypotheses
from .fcomb import FComb
from .gaussian_encoder import GaussianEncoder
from .init import init_weights_orthogonal
from .mheads import MHeadsUNet
from .prob_unet import ProbUNet, segmentation_to_onehot
from .unet import DeterministicUNet
from .unet_core import ConvBlock, UNetCore, UNetDecoder, UNetEncoder
from .utils import hypotheses_to_labels

__all__ = [
    "GaussianEncoder",
    "ConvBlock",
    "DeterministicUNet",
    "FComb",
    "MHeadsUNet",
    "ProbUNet",
    "ProbUNetSampler",
    "UNetCore",
    "UNetDecoder",
    "UNetEncoder",
    "UNetEnsemble",
    "hypotheses_to_labels",
    "init_weights_orthogonal",
    "segmentation_to_onehot",
    "unstack_hypotheses",
]
