from mcssl.losses.combine import combine_losses
from mcssl.losses.concept import CenteredCrossEntropy, MultiViewCrossEntropy
from mcssl.losses.recon import norm_pix, reconstruction_loss

__all__ = [
    "CenteredCrossEntropy",
    "MultiViewCrossEntropy",
    "combine_losses",
    "norm_pix",
    "reconstruction_loss",
]
