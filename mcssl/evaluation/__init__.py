"""Evaluation of teachers: concept discovery against ground-truth masks (``mcssl eval``)."""
