"""mcssl: multi-concept self-supervised learning (MC-SSL0.0) for vision transformers."""

__version__ = "0.1.0"
