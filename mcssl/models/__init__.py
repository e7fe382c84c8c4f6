from mcssl.models.heads import ConceptHead, ReconstructionHead, WeightNormLinear
from mcssl.models.mcssl import Student, Teacher, build_backbone, ema_pairs, ema_update, encode

__all__ = [
    "ConceptHead",
    "ReconstructionHead",
    "Student",
    "Teacher",
    "WeightNormLinear",
    "build_backbone",
    "ema_pairs",
    "ema_update",
    "encode",
]
