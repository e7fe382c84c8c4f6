"""Concept analysis engine: what the app shows, callable from scripts and notebooks.

from mcssl.explore import load_encoder, FeatureExtractor, concepts_for_ks
enc = load_encoder("runs/vits16")            # or "default", an export, DINO, timm, ...
feats = FeatureExtractor(enc)([image])[0]    # tokens (N, D), grid, probs (N, K)
labels = concepts_for_ks(feats.tokens, (2, 3, 4))
"""

from mcssl.explore.concepts import (
    cluster_mean_probs,
    cocluster_for_ks,
    concept_histograms,
    concepts_for_ks,
    top_concepts,
    upsample_labels,
)
from mcssl.explore.encoder import Encoder, EncoderError, load_encoder
from mcssl.explore.features import FeatureExtractor, ImageFeatures, Settings
from mcssl.explore.render import overlay, side_by_side, token_crop

__all__ = [
    "Encoder",
    "EncoderError",
    "FeatureExtractor",
    "Hit",
    "ImageFeatures",
    "Settings",
    "TokenIndex",
    "TokenIndexError",
    "cluster_mean_probs",
    "cocluster_for_ks",
    "concept_histograms",
    "concepts_for_ks",
    "load_encoder",
    "overlay",
    "side_by_side",
    "token_crop",
    "top_concepts",
    "upsample_labels",
]

_INDEX_NAMES = ("Hit", "TokenIndex", "TokenIndexError")


def __getattr__(name: str) -> object:
    """The retrieval names load on first use: they need faiss, which training and evaluation do
    not (the lent GPU machines have torch and timm but no faiss, and nothing installs there)."""
    if name in _INDEX_NAMES:
        from mcssl.explore import index

        return getattr(index, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
