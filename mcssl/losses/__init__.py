from mcssl.losses.combine import combine_losses
from mcssl.losses.concept import CenteredCrossEntropy, MultiViewCrossEntropy, soft_cross_entropy
from mcssl.losses.recon import norm_pix, reconstruction_loss, texture_loss

__all__ = [
    "CenteredCrossEntropy",
    "MultiViewCrossEntropy",
    "combine_losses",
    "norm_pix",
    "reconstruction_loss",
    "soft_cross_entropy",
    "texture_loss",
]
