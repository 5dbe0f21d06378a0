"""LEACE (Belrose et al. 2023): the least-squares edit after which no linear classifier beats a
constant at predicting a concept z from a representation x (all class-conditional means equal).

With W = Sigma_xx^(-1/2) the whitening and P_W the orthogonal projection onto the column space of
W Sigma_xz, the eraser is x -> x - P (x - mean), P = W^+ P_W W. `fit_leace` fits one eraser of any
rank; `binary_leace` fits the rank-1 erasers of "label == c" for many classes c at once (the same
whitening, computed once).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Eraser:
    """Affine LEACE eraser x -> x - P (x - mean), P the oblique projection onto what is erased."""
    mean: torch.Tensor
    proj: torch.Tensor
    rank: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, proj = self.mean.to(x), self.proj.to(x)
        return x - (x - mean) @ proj.T

    def factors(self, tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mean and factors A, B [d, rank] with P = A B^T (the form `rote.interp.edits.Removal` applies)."""
        u, s, vh = torch.linalg.svd(self.proj.double())
        keep = s > tol * s.max().clamp(min=1e-30)
        return self.mean.float(), (u[:, keep] * s[keep]).float(), vh[keep].T.float()


def whitening(x: torch.Tensor, tol: float = 1e-8):
    """Centred x (float64), its mean, W = Sigma_xx^(-1/2) and its pseudo-inverse W^+ (directions of
    variance below `tol` times the largest are left out)."""
    x = x.detach().double().cpu()
    mean = x.mean(0)
    xc = x - mean
    val, vec = torch.linalg.eigh(xc.T @ xc / len(x))
    keep = val > tol * val.max()
    v, val = vec[:, keep], val[keep]
    return xc, mean, v @ torch.diag(val.rsqrt()) @ v.T, v @ torch.diag(val.sqrt()) @ v.T


def fit_leace(x: torch.Tensor, z: torch.Tensor, tol: float = 1e-8) -> Eraser:
    """The LEACE eraser of z from x: x [N, d]; z [N] class ids or [N, k] one-hot/features."""
    z = torch.nn.functional.one_hot(z.long()).double() if z.dim() == 1 else z.double()
    xc, mean, w, w_pinv = whitening(x, tol)
    zc = z.cpu() - z.cpu().mean(0)
    u, s, _ = torch.linalg.svd(w @ (xc.T @ zc / len(xc)), full_matrices=False)
    u = u[:, s > tol * s.max().clamp(min=1e-30)] if s.numel() else u[:, :0]
    return Eraser(mean.float(), (w_pinv @ u @ u.T @ w).float(), u.shape[1])


def binary_leace(x: torch.Tensor, labels, classes, tol: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each class c of `classes`, the rank-1 LEACE eraser of "label == c" fitted on x [N, d]
    (the same as `fit_leace(x, labels == c)`, computed together): mean [d], A and B [C, d] with
    the eraser x -> x - A_c (B_c . (x - mean)). A class absent from `labels` gets A_c = B_c = 0."""
    labels = np.asarray(labels)
    xc, mean, w, w_pinv = whitening(x, tol)
    z = torch.tensor(np.stack([labels == c for c in classes], 1), dtype=torch.float64)
    u = w @ (xc.T @ (z - z.mean(0)) / len(xc))  # [d, C]
    norm = u.norm(dim=0)
    ok = norm > tol * norm.max().clamp(min=1e-30) if norm.numel() else norm > 0
    u = torch.where(ok, u / norm.clamp(min=1e-30), torch.zeros_like(u))
    return mean.float(), (w_pinv @ u).T.float(), (w @ u).T.float()


def relabel(z: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Labels shuffled across instances (seeded): fitting LEACE on them gives a control eraser of
    the same rank that erases nothing in particular."""
    return z[torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))]
