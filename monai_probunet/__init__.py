"""monai-probunet: the Probabilistic U-Net (Kohl et al., 2018) as a MONAI toolkit."""

__version__ = "0.1.0"
