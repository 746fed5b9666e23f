"""Singular values, energy, and best low-rank approximations (introduced in notebook 01).

For a matrix with singular values s_1 >= s_2 >= ..., the *energy* captured by the top r is
(s_1^2 + ... + s_r^2) / (s_1^2 + s_2^2 + ...). By the Eckart-Young theorem, truncating the SVD to
r terms is the best rank-r approximation in Frobenius norm, and its squared error is exactly the
energy left out: ||W - W_r||_F^2 = s_{r+1}^2 + s_{r+2}^2 + ...
"""

from __future__ import annotations

import torch


def energy_curve(singular_values: torch.Tensor) -> torch.Tensor:
    """Fraction of energy captured by the top r singular values, for r = 1, 2, ... (k,)."""
    power = singular_values.double() ** 2  # (k,), descending
    return (power.cumsum(0) / power.sum()).float()


def matrix_energy(matrix: torch.Tensor) -> torch.Tensor:
    """energy_curve of a matrix's singular values."""
    return energy_curve(torch.linalg.svdvals(matrix.detach().float()))


def energy_at(curve: torch.Tensor, ranks) -> dict[int, float]:
    """Read a curve at given ranks: {r: fraction of energy in the top r}."""
    return {r: curve[min(r, len(curve)) - 1].item() for r in ranks}


def low_rank(svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor], r: int) -> torch.Tensor:
    """Best rank-r approximation U_r diag(S_r) Vh_r from a reduced SVD (U, S, Vh)."""
    U, S, Vh = svd  # (m, k), (k,), (k, n)
    if r < 0:
        raise ValueError(f"rank must be >= 0, got {r}")
    return (U[:, :r] * S[:r]) @ Vh[:r]  # (m, r) * (r,) @ (r, n) -> (m, n)


def truncation_error(singular_values: torch.Tensor, r: int) -> float:
    """Frobenius error of the best rank-r approximation: sqrt(sum of s_i^2 for i > r)."""
    return singular_values[r:].double().pow(2).sum().sqrt().item()
