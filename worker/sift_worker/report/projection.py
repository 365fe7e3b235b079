"""2-D projection of embeddings for the report's map.

PCA is used rather than t-SNE/UMAP because it is deterministic, needs no extra
dependencies, and a linear map keeps the report honest: distances on the map are
a (shrunk) view of real embedding distances, so "spread out" means spread out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["project_2d"]

# Rows per projection chunk: bounds temporary memory to ~chunk * D * 4 bytes even
# when N is in the millions.
_CHUNK_ROWS = 65_536
# Above this size (min of fit rows and dims) an exact eigendecomposition takes
# seconds on a small CPU (20k x 1024: ~7 s on 2 cores); seeded randomized subspace
# iteration gives the same top-2 directions in a fraction of that.
_EXACT_MAX = 256


def _normalise(rows: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """L2-normalise rows in float64; zero or non-finite rows become zero.

    Normalising first makes the map reflect cosine geometry, which is what the
    diversity selection works in, and keeps a few huge-norm rows from dominating.
    """
    x = np.nan_to_num(np.asarray(rows, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def _chunk_rows_and_norms(
    chunk: npt.NDArray[Any],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Rows as float32 plus their L2 norms, treating non-finite values as zero.

    The finite check runs on the norms, so clean data (the normal case) costs
    no extra pass; only offending rows are repaired, matching ``_normalise``.
    """
    rows = np.asarray(chunk, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    bad = ~np.isfinite(norms)
    if bad.any():
        rows = rows.copy()
        fixed = np.nan_to_num(rows[bad].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        norms[bad] = np.linalg.norm(fixed, axis=1)
        # Scale before casting back so very large (but finite) values cannot overflow.
        safe = np.where(norms[bad] > 0, norms[bad], 1.0)[:, None]
        rows[bad] = fixed / safe
        norms[bad] = np.where(norms[bad] > 0, 1.0, 0.0)
    return rows, norms


def _top_components(centred: npt.NDArray[np.float64], k: int, seed: int) -> npt.NDArray[np.float64]:
    """Return the top-``k`` principal directions of ``centred`` as a (D, k) matrix."""
    m, d = centred.shape
    if min(m, d) <= _EXACT_MAX:
        if d <= m:
            # Covariance route: eigh of a D x D matrix.
            _, vecs = np.linalg.eigh(centred.T @ centred)
            comps = vecs[:, ::-1][:, :k]
        else:
            # Gram route: eigh of an M x M matrix, then map back to feature space.
            vals, uvecs = np.linalg.eigh(centred @ centred.T)
            vals, uvecs = vals[::-1][:k], uvecs[:, ::-1][:, :k]
            comps = centred.T @ uvecs
            norms = np.linalg.norm(comps, axis=0)
            comps = np.divide(comps, norms, out=np.zeros_like(comps), where=norms > 1e-12)
        return np.asarray(comps, dtype=np.float64)
    # Randomized subspace iteration (Halko et al.): a handful of passes over the
    # fit sample instead of a cubic decomposition; ample accuracy for a picture.
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(centred @ rng.standard_normal((d, k + 10)))
    for _ in range(8):
        q, _ = np.linalg.qr(centred.T @ q)
        q, _ = np.linalg.qr(centred @ q)
    _, _, vt = np.linalg.svd(q.T @ centred, full_matrices=False)
    return np.asarray(vt[:k].T, dtype=np.float64)


def project_2d(
    embeddings: npt.NDArray[Any], *, seed: int = 0, max_fit: int = 20_000
) -> npt.NDArray[np.float32]:
    """Project (N, D) embeddings to (N, 2) with PCA on L2-normalised rows.

    The PCA basis is fitted on at most ``max_fit`` rows chosen with ``seed``, then
    every row is projected in chunks, so cost and memory stay bounded for very
    large N. Results are deterministic: component signs are fixed so that each
    component's largest-magnitude loading is positive. Where a direction is
    undefined (N < 3, D < 2, constant data) the corresponding column is zero.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {x.shape}")
    if max_fit < 1:
        raise ValueError("max_fit must be >= 1")
    n, d = x.shape
    out = np.zeros((n, 2), dtype=np.float32)
    if n < 2 or d == 0:
        return out

    if n > max_fit:
        rng = np.random.default_rng(seed)
        fit_idx = np.sort(rng.choice(n, size=max_fit, replace=False))
        fit = _normalise(x[fit_idx])
    else:
        fit = _normalise(x)
    mean = fit.mean(axis=0)
    fit -= mean

    k = min(2, d)
    comps = _top_components(fit, k, seed)
    # Drop directions with (numerically) no variance: they are noise, not structure.
    spread = np.linalg.norm(fit @ comps, axis=0)
    scale = float(np.linalg.norm(fit)) or 1.0
    comps[:, spread <= 1e-9 * scale] = 0.0
    # Deterministic sign: largest-magnitude loading of each component is positive.
    pivot = np.argmax(np.abs(comps), axis=0)
    signs = np.sign(comps[pivot, np.arange(k)])
    comps *= np.where(signs == 0, 1.0, signs)

    # Project without materialising normalised rows: (x / |x| - mean) @ C equals
    # (x @ C) / |x| - mean @ C, so each chunk costs one pass for norms and one
    # thin matmul, in float32 (plenty for a picture).
    comps32 = comps.astype(np.float32)
    offset = (mean @ comps).astype(np.float32)
    for start in range(0, n, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, n)
        rows, norms = _chunk_rows_and_norms(x[start:stop])
        proj = rows @ comps32
        np.divide(proj, norms[:, None], out=proj, where=norms[:, None] > 0)
        proj[norms <= 0] = 0.0
        out[start:stop, :k] = proj - offset
    return out
