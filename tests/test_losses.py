"""Loss terms against values computed by hand with plain Python (math.exp / math.log)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from mcssl.losses import (
    CenteredCrossEntropy,
    MultiViewCrossEntropy,
    combine_losses,
    reconstruction_loss,
)


# ---- plain-Python reference ---------------------------------------------------------------
def _softmax(z: list[float], temp: float, center: list[float] | None = None) -> list[float]:
    c = center or [0.0] * len(z)
    e = [math.exp((zi - ci) / temp) for zi, ci in zip(z, c, strict=True)]
    s = sum(e)
    return [v / s for v in e]


def _cross_entropy(
    s: list[float], t: list[float], tau_s: float, tau_t: float, c: list[float]
) -> float:
    p_t = _softmax(t, tau_t, c)
    p_s = _softmax(s, tau_s)
    return -sum(a * math.log(b) for a, b in zip(p_t, p_s, strict=True))


STUDENT = [[[0.2, -0.5, 1.0], [1.5, 0.3, -0.7]]]  # (B=1, N=2, K=3)
TEACHER = [[[0.1, 0.4, -0.2], [-1.0, 0.5, 0.9]]]
CENTER = [0.05, -0.1, 0.2]


# ---- CenteredCrossEntropy ---------------------------------------------------------------
def test_centered_cross_entropy_by_hand():
    tau_s, tau_t = 0.1, 0.04
    crit = CenteredCrossEntropy(3, student_temp=tau_s)
    crit.center.copy_(torch.tensor(CENTER))
    got = crit(torch.tensor(STUDENT), torch.tensor(TEACHER), tau_t)
    tokens = [
        _cross_entropy(s, t, tau_s, tau_t, CENTER)
        for s, t in zip(STUDENT[0], TEACHER[0], strict=True)
    ]
    want = sum(tokens) / len(tokens)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-5)
    # the value is not trivially small: the two distributions differ
    assert want > 1.0


def _hand_patch_loss(tau_s: float, tau_t: float, center: list[float]) -> float:
    tokens = [
        _cross_entropy(s, t, tau_s, tau_t, center)
        for s, t in zip(STUDENT[0], TEACHER[0], strict=True)
    ]
    return sum(tokens) / len(tokens)


def test_centered_cross_entropy_uses_center_and_temperatures():
    crit = CenteredCrossEntropy(3, student_temp=0.1)
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    no_center = crit(s, t, 0.04).item()
    assert no_center == pytest.approx(_hand_patch_loss(0.1, 0.04, [0.0] * 3), rel=1e-5)
    crit.center.copy_(torch.tensor(CENTER))
    assert crit(s, t, 0.04).item() != pytest.approx(no_center, rel=1e-3)
    assert crit(s, t, 0.07).item() == pytest.approx(_hand_patch_loss(0.1, 0.07, CENTER), rel=1e-5)
    crit2 = CenteredCrossEntropy(3, student_temp=0.2)
    crit2.center.copy_(torch.tensor(CENTER))
    assert crit2(s, t, 0.04).item() == pytest.approx(_hand_patch_loss(0.2, 0.04, CENTER), rel=1e-5)


def test_centered_cross_entropy_student_gradient_by_hand():
    crit = CenteredCrossEntropy(3)
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(TEACHER, requires_grad=True)
    crit(s, t, 0.04).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    # d/ds of CE w.r.t. student logits: (p_s - p_t) / (tau_s * n_tokens)
    for n in range(2):
        p_s = _softmax(STUDENT[0][n], 0.1)
        p_t = _softmax(TEACHER[0][n], 0.04)
        want = [(a - b) / (0.1 * 2) for a, b in zip(p_s, p_t, strict=True)]
        assert s.grad[0, n].tolist() == pytest.approx(want, rel=1e-4, abs=1e-7)


def test_forward_does_not_touch_center():
    crit = CenteredCrossEntropy(3)
    crit.center.copy_(torch.tensor(CENTER))
    crit(torch.tensor(STUDENT), torch.tensor(TEACHER), 0.04)
    assert crit.center.tolist() == pytest.approx(CENTER)


def test_update_center_by_hand_without_process_group():
    assert not (dist.is_available() and dist.is_initialized())
    m = 0.9
    crit = CenteredCrossEntropy(3, momentum=m)
    crit.center.copy_(torch.tensor(CENTER))
    logits = [  # (B=2, N=2, K=3)
        [[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]],
        [[2.0, 0.5, -3.0], [5.0, 1.0, 0.0]],
    ]
    crit.update_center(torch.tensor(logits))
    tokens = [tok for img in logits for tok in img]
    mean = [sum(tok[k] for tok in tokens) / len(tokens) for k in range(3)]  # [2.0, 0.625, 1.0]
    want = [m * c + (1 - m) * mu for c, mu in zip(CENTER, mean, strict=True)]
    assert crit.center.tolist() == pytest.approx(want, rel=1e-6)
    # a second step compounds the EMA
    crit.update_center(torch.tensor(logits))
    want2 = [m * c + (1 - m) * mu for c, mu in zip(want, mean, strict=True)]
    assert crit.center.tolist() == pytest.approx(want2, rel=1e-6)


def test_update_center_accepts_2d_logits():
    crit = CenteredCrossEntropy(2, momentum=0.5)
    crit.update_center(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))
    assert crit.center.tolist() == pytest.approx([1.0, 2.0])


# ---- MultiViewCrossEntropy --------------------------------------------------------------
def test_multiview_cross_entropy_two_global_one_local_by_hand():
    tau_s, tau_t, b = 0.1, 0.04, 2
    center = [0.1, 0.0, -0.2]
    # student views: global 0, global 1, local 0 (each B=2 rows), views first
    student = [
        [0.3, -0.2, 0.5],
        [1.0, 0.0, -1.0],  # global 0
        [0.1, 0.9, -0.4],
        [-0.6, 0.2, 0.7],  # global 1
        [0.5, 0.5, -0.5],
        [0.0, -0.8, 0.4],  # local 0
    ]
    teacher = [
        [0.2, 0.1, -0.3],
        [0.7, -0.1, 0.0],  # global 0
        [-0.4, 0.6, 0.2],
        [0.3, 0.3, -0.9],  # global 1
    ]
    crit = MultiViewCrossEntropy(3, student_temp=tau_s)
    crit.center.copy_(torch.tensor(center))
    got = crit(torch.tensor(student), torch.tensor(teacher), tau_t, n_global=2)

    def pair(ti: int, sj: int) -> float:  # mean over the batch of CE(teacher view, student view)
        return (
            sum(
                _cross_entropy(student[sj * b + r], teacher[ti * b + r], tau_s, tau_t, center)
                for r in range(b)
            )
            / b
        )

    pairs = [pair(0, 1), pair(0, 2), pair(1, 0), pair(1, 2)]  # never a view with itself
    want = sum(pairs) / 4
    assert got.item() == pytest.approx(want, rel=1e-5)
    # including the same-view pairs would give a different number
    with_same = (sum(pairs) + pair(0, 0) + pair(1, 1)) / 6
    assert want != pytest.approx(with_same, rel=1e-3)


# ---- reconstruction_loss ----------------------------------------------------------------
# one image, 3 channels, 4x4 pixels, patch 2 -> a 2x2 grid; the top-right patch is corrupted
MASK = [[False, True], [False, False]]


def _recon_example():
    target = [
        [[float(ch * 16 + r * 4 + c) / 8 for c in range(4)] for r in range(4)] for ch in range(3)
    ]
    recon = [
        [[(-1.0) ** (r + c) * 0.5 * (ch + 1) for c in range(4)] for r in range(4)]
        for ch in range(3)
    ]
    return recon, target


def _hand_recon(kind: str, region: str) -> float:
    recon, target = _recon_example()
    total, count = 0.0, 0
    for ch in range(3):
        for r in range(4):
            for c in range(4):
                if region == "corrupted" and not MASK[r // 2][c // 2]:
                    continue
                d = recon[ch][r][c] - target[ch][r][c]
                total += abs(d) if kind == "l1" else d * d
                count += 1
    return total / count


@pytest.mark.parametrize("kind", ["l1", "mse"])
@pytest.mark.parametrize("region", ["all", "corrupted"])
def test_reconstruction_loss_by_hand(kind, region):
    recon, target = _recon_example()
    got = reconstruction_loss(
        torch.tensor([recon]), torch.tensor([target]), torch.tensor([MASK]), kind, region
    )
    assert got.item() == pytest.approx(_hand_recon(kind, region), rel=1e-6)


def test_reconstruction_loss_variants_differ():
    values = {(k, r): _hand_recon(k, r) for k in ("l1", "mse") for r in ("all", "corrupted")}
    assert len({round(v, 6) for v in values.values()}) == 4  # the example tells them apart


def test_reconstruction_loss_corrupted_counts_only_masked_pixels():
    """Errors outside the mask do not count; the mean is over masked pixels of the batch."""
    target = torch.zeros(2, 3, 4, 4)
    recon = torch.full((2, 3, 4, 4), 100.0)  # huge error everywhere ...
    recon[0, :, 0:2, 2:4] = 1.0  # ... except the masked patch of image 0: error 1
    recon[1, :, 2:4, 0:2] = 3.0  # and of image 1: error 3
    mask = torch.tensor([[[False, True], [False, False]], [[False, False], [True, False]]])
    got = reconstruction_loss(recon, target, mask, "l1", "corrupted")
    assert got.item() == pytest.approx((1.0 * 12 + 3.0 * 12) / 24)
    got = reconstruction_loss(recon, target, mask, "mse", "corrupted")
    assert got.item() == pytest.approx((1.0 * 12 + 9.0 * 12) / 24)


def test_reconstruction_loss_corrupted_with_empty_mask_is_zero():
    got = reconstruction_loss(
        torch.ones(1, 3, 4, 4),
        torch.zeros(1, 3, 4, 4),
        torch.zeros(1, 2, 2, dtype=torch.bool),
        "l1",
        "corrupted",
    )
    assert torch.isfinite(got) and got.item() == 0.0


# ---- combine_losses ---------------------------------------------------------------------
TERMS = {"recon": 0.8, "concept": 5.0}


def _terms() -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in TERMS.items()}


def test_combine_average():
    assert combine_losses(_terms(), "average").item() == pytest.approx((0.8 + 5.0) / 2)


def test_combine_sum_as_the_reference():
    assert combine_losses(_terms(), "sum").item() == pytest.approx(0.8 + 5.0)


def test_combine_fixed_weights():
    got = combine_losses(_terms(), "fixed", weights={"recon": 2.0, "concept": 0.25, "cls": 9.0})
    assert got.item() == pytest.approx(2.0 * 0.8 + 0.25 * 5.0)


def test_combine_uncertainty_by_hand_and_gradient():
    s = [0.3, -0.7]
    log_vars = torch.tensor(s, requires_grad=True)
    got = combine_losses(_terms(), "uncertainty", log_vars=log_vars)
    losses = list(TERMS.values())
    want = sum(0.5 * math.exp(-si) * li + 0.5 * si for si, li in zip(s, losses, strict=True))
    assert got.item() == pytest.approx(want, rel=1e-6)
    got.backward()
    assert log_vars.grad is not None
    # d/ds_i = -0.5 * exp(-s_i) * L_i + 0.5
    want_grad = [-0.5 * math.exp(-si) * li + 0.5 for si, li in zip(s, losses, strict=True)]
    assert log_vars.grad.tolist() == pytest.approx(want_grad, rel=1e-6)


def test_combine_uncertainty_at_zero_is_half_the_sum():
    log_vars = torch.zeros(2, requires_grad=True)
    got = combine_losses(_terms(), "uncertainty", log_vars=log_vars)
    assert got.item() == pytest.approx(0.5 * (0.8 + 5.0))


def test_combine_gradients_flow_to_terms():
    terms = {k: torch.tensor(v, requires_grad=True) for k, v in TERMS.items()}
    combine_losses(terms, "average").backward()
    assert [t.grad.item() for t in terms.values()] == pytest.approx([0.5, 0.5])


def test_combine_unknown_raises():
    with pytest.raises(ValueError):
        combine_losses(_terms(), "median")
