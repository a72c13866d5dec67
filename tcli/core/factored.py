"""A matrix kept as a product of thin factors, M = A @ B, and exact linear algebra on the factors.

Legend: M [m, n] = A [m, r] @ B [r, n]; r (the inner dimension) is small (d_model or d_head),
m and n may be vocabulary-sized. Nothing here forms an m × n matrix except ``dense``.
"""

from __future__ import annotations

import numpy as np


class Factored:
    """M = A @ B, A [m, r], B [r, n]."""

    def __init__(self, A: np.ndarray, B: np.ndarray):
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
            raise ValueError(f"factors {A.shape} and {B.shape} do not multiply")
        self.A, self.B = A, B

    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape[0], self.B.shape[1]

    @property
    def inner(self) -> int:
        return self.A.shape[1]

    @property
    def T(self) -> "Factored":
        return Factored(self.B.T, self.A.T)

    def dense(self) -> np.ndarray:
        """The full [m, n] matrix (only for small shapes and tests)."""
        return self.A @ self.B

    def rows(self, idx) -> np.ndarray:
        """M[idx, :] = A[idx] @ B."""
        return self.A[idx] @ self.B

    def cols(self, idx) -> np.ndarray:
        """M[:, idx] = A @ B[:, idx]."""
        return self.A @ self.B[:, idx]

    def __matmul__(self, other) -> "Factored":
        """M @ other, kept factored through the smaller inner dimension."""
        if isinstance(other, Factored):
            mid = self.B @ other.A  # [r1, r2]
            if self.inner <= other.inner:
                return Factored(self.A, mid @ other.B)
            return Factored(self.A @ mid, other.B)
        return Factored(self.A, self.B @ other)

    def __sub__(self, other: "Factored") -> "Factored":
        """M_A − M_B = [A_1, −A_2] @ [B_1; B_2]: one factored product of inner size r_1 + r_2 (exact)."""
        if self.shape != other.shape:
            raise ValueError(f"cannot subtract a {other.shape} matrix from a {self.shape} one")
        return Factored(np.hstack([self.A, -other.A]), np.vstack([self.B, other.B]))

    def entries(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """M[rows[i], cols[i]] for each i (rows and cols [n]): n dot products of length r."""
        return np.einsum("ij,ji->i", self.A[rows], self.B[:, cols])

    def __rmatmul__(self, other: np.ndarray) -> "Factored":
        return Factored(other @ self.A, self.B)

    def _cores(self):
        Qa, Ra = np.linalg.qr(self.A)  # A = Qa Ra, Qa [m, r'], Ra [r', r]
        Qb, Rb = np.linalg.qr(self.B.T)  # B^T = Qb Rb, Qb [n, r''], Rb [r'', r]
        return Qa, Ra @ Rb.T, Qb  # M = Qa (Ra Rb^T) Qb^T

    def svdvals(self) -> np.ndarray:
        """Singular values of M, descending: those of the small core Ra Rb^T (exact)."""
        _, core, _ = self._cores()
        return np.linalg.svd(core, compute_uv=False)

    def svd(self):
        """U [m, r], S [r], Vh [r, n] with M = U diag(S) Vh (thin, from the core's SVD)."""
        Qa, core, Qb = self._cores()
        Uc, S, Vhc = np.linalg.svd(core, full_matrices=False)
        return Qa @ Uc, S, Vhc @ Qb.T

    def eigvals(self) -> np.ndarray:
        """Eigenvalues of square M: the nonzero ones equal those of B @ A [r, r]; sorted by |λ| desc."""
        m, n = self.shape
        if m != n:
            raise ValueError(f"eigenvalues need a square matrix, got {self.shape}")
        small = self.B @ self.A if self.inner <= m else self.dense()
        lam = np.linalg.eigvals(small)
        return lam[np.argsort(-np.abs(lam), kind="stable")]

    def frobenius(self) -> float:
        """‖A B‖_F = sqrt(tr(AᵀA · B Bᵀ)), from two r × r Gram matrices (float64)."""
        A, B = self.A.astype(np.float64), self.B.astype(np.float64)
        return float(np.sqrt(max(np.sum((A.T @ A) * (B @ B.T)), 0.0)))

    def mean_and_std(self) -> tuple[float, float]:
        """Mean and standard deviation of all m·n entries, exactly, from the factors."""
        m, n = self.shape
        total = float(self.A.astype(np.float64).sum(0) @ self.B.astype(np.float64).sum(1))
        mean = total / (m * n)
        var = self.frobenius() ** 2 / (m * n) - mean**2
        return mean, float(np.sqrt(max(var, 0.0)))


def copying_score(eigenvalues: np.ndarray) -> float:
    """Σ Re λ / Σ |λ| in [-1, 1] (the paper's copying summary); NaN when all λ are zero."""
    denom = float(np.abs(eigenvalues).sum())
    return float(np.real(eigenvalues).sum() / denom) if denom > 0 else float("nan")


def effective_rank(singular_values: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values p_i = σ_i / Σσ (Roy & Vetterli, 2007)."""
    s = np.asarray(singular_values, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def gram_root(G: np.ndarray) -> np.ndarray:
    """R [r, r] with RᵀR = G for a symmetric PSD Gram matrix G = AᵀA (so A = U R, U orthonormal)."""
    lam, Q = np.linalg.eigh(np.asarray(G, dtype=np.float64))
    return np.sqrt(np.clip(lam, 0.0, None))[:, None] * Q.T


def svdvals_from_grams(GA: np.ndarray, GB: np.ndarray) -> np.ndarray:
    """Singular values of A B given only GA = AᵀA and GB = B Bᵀ [r, r]: those of Ra Rbᵀ.

    Lets a full circuit's spectrum be computed from d_model-sized Grams (W_Eᵀ W_E, W_U W_Uᵀ)
    without touching the vocabulary per head. Float64; relative accuracy ~ eps·(σ_max/σ)²."""
    return np.linalg.svd(gram_root(GA) @ gram_root(GB).T, compute_uv=False)
