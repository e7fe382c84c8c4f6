"""Combining the loss terms: average (the paper), sum (the reference code), fixed weights, or
uncertainty weighting."""

from __future__ import annotations

import torch


def combine_losses(
    terms: dict[str, torch.Tensor],
    how: str,
    weights: dict[str, float] | None = None,
    log_vars: torch.Tensor | None = None,
) -> torch.Tensor:
    """terms: name -> scalar. ``uncertainty`` learns s_i = log sigma_i^2 per term (Kendall et
    al. 2018): ``sum_i 0.5 * exp(-s_i) * L_i + 0.5 * s_i``."""
    values = list(terms.values())
    if how == "average":
        return torch.stack(values).mean()
    if how == "sum":
        return torch.stack(values).sum()
    if how == "fixed":
        assert weights is not None
        return sum(weights[k] * v for k, v in terms.items())  # type: ignore[return-value]
    if how == "uncertainty":
        assert log_vars is not None and len(log_vars) >= len(values)
        s = log_vars[: len(values)]
        return (0.5 * torch.exp(-s) * torch.stack(values) + 0.5 * s).sum()
    raise ValueError(f"unknown loss combination {how!r}")
