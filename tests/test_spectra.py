"""Energy curves and truncated SVDs, checked against their definitions."""

import pytest
import torch

from lora_course.spectra import energy_at, energy_curve, low_rank, matrix_energy, truncation_error


def rank_k(m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g) @ torch.randn(k, n, generator=g)


def test_a_rank_k_matrix_has_all_its_energy_in_k_directions():
    curve = matrix_energy(rank_k(40, 30, 3))
    assert curve.shape == (30,)
    assert curve[2] == pytest.approx(1.0, abs=1e-6) and curve[1] < 0.999
    assert torch.all(curve[1:] >= curve[:-1]), "energy is cumulative"


def test_eckart_young_error_equals_the_energy_left_out():
    W = torch.randn(50, 40, generator=torch.Generator().manual_seed(1))
    svd = torch.linalg.svd(W, full_matrices=False)
    curve = energy_curve(svd.S)
    for r in (0, 1, 5, 20, 40):
        error = torch.linalg.matrix_norm(W - low_rank(svd, r)).item()
        assert error == pytest.approx(truncation_error(svd.S, r), rel=1e-4, abs=1e-3)
        left_out = 1 - (curve[r - 1].item() if r else 0.0)
        assert error**2 / W.pow(2).sum().item() == pytest.approx(left_out, abs=1e-5)
    assert torch.linalg.matrix_rank(low_rank(svd, 5)) == 5


def test_truncation_beats_another_rank_r_approximation():
    W = torch.randn(30, 30, generator=torch.Generator().manual_seed(2))
    svd = torch.linalg.svd(W, full_matrices=False)
    Q, _ = torch.linalg.qr(torch.randn(30, 4, generator=torch.Generator().manual_seed(3)))
    projected = W @ Q @ Q.T  # a rank-4 approximation in a random subspace
    best = torch.linalg.matrix_norm(W - low_rank(svd, 4))
    assert best < torch.linalg.matrix_norm(W - projected)


def test_energy_at_reads_ranks_and_clamps_to_the_curve():
    curve = torch.tensor([0.5, 0.8, 1.0])
    assert energy_at(curve, [1, 3, 64]) == {1: 0.5, 3: 1.0, 64: 1.0}
    with pytest.raises(ValueError):
        low_rank(torch.linalg.svd(torch.eye(3)), -1)
