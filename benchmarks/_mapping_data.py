"""The two reference/query designs of ``benchmarks/mapping.py``, every random choice fixed here.

- ``bmmc`` (design a): the bundled BMMC CITE-seq set (600 cells, 1000 genes + 134 ADT). Reference =
  batch ``s1d1`` with RNA and protein; query = batch ``s1d2`` given as RNA only, its measured protein
  kept aside as the truth for imputation. No type is removed: types that exist only in ``s1d2`` are the
  query's unknown cells, and label metrics use the query cells whose type the reference has.
- ``worm`` (design b): the bundled worm neurons (4186 cells, ``obs["label"]``), genes seen in fewer than
  3 cells dropped, then 2000 ``seurat_v3`` HVGs of the counts. A seeded 50/50 split into reference and
  query; cell type :data:`REMOVED_TYPE` is removed from the reference; the query gets a site effect
  (:func:`site_effect`).
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from _common import load_worm_neurons, select_hvg_counts

import scamort

LABEL = "label"
BATCH = "batch"
PROTEIN = "protein_expression"
#: Fixed before any result: the reference/query split of the worm cells.
SPLIT_SEED = 20261202
#: Fixed before any result: the draw of the query's site effect.
SITE_SEED = 17
#: Per-gene capture (keep probability) of the query site, uniform on this range.
GENE_KEEP_RANGE = (0.35, 1.0)
#: Per-cell depth factor of the query site, uniform on this range (multiplies the gene's keep probability).
CELL_DEPTH_RANGE = (0.5, 1.0)
#: Removed from the worm reference. Class "2" has 334 of 4186 cells, the fifth of ten classes by size
#: (median class size 324): big enough for ~170 novel query cells to give a stable AUROC, small enough
#: that the reference keeps most of its cells. Chosen before any result.
REMOVED_TYPE = "2"
REFERENCE_BATCH = {"bmmc": "s1d1", "worm": "reference_site"}
QUERY_BATCH = {"bmmc": "s1d2", "worm": "query_site"}


@dataclass(frozen=True)
class Design:
    """One reference/query pair.

    Attributes
    ----------
    name
        ``"bmmc"`` or ``"worm"``.
    reference
        Raw counts in ``X``, ``obs[LABEL]``, ``obs[BATCH]``; ``obsm[PROTEIN]`` for ``bmmc``.
    query
        Raw counts in ``X``, ``obs[LABEL]`` (the truth, never shown to a model), ``obs[BATCH]``; RNA only.
    query_protein
        The query's measured protein counts ``(n_query, n_proteins)`` (``bmmc``), else ``None``.
    """

    name: str
    reference: ad.AnnData
    query: ad.AnnData
    query_protein: pd.DataFrame | None

    def known(self) -> np.ndarray:
        """Boolean ``(n_query,)``: the query cell's type exists in the reference."""
        types = set(self.reference.obs[LABEL].astype(str))
        return self.query.obs[LABEL].astype(str).isin(types).to_numpy()


def _counts_only(adata: ad.AnnData, labels: pd.Series, batch: str) -> ad.AnnData:
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    out = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32), var=pd.DataFrame(index=adata.var_names.copy()))
    out.obs_names = adata.obs_names.copy()
    out.obs[LABEL] = pd.Categorical(labels.astype(str).to_numpy())
    out.obs[BATCH] = pd.Categorical([batch] * adata.n_obs)
    return out


def site_effect(counts: sp.csr_matrix, seed: int = SITE_SEED) -> sp.csr_matrix:
    """Binomial thinning with keep probability ``p_g * d_c``.

    ``p_g ~ U(GENE_KEEP_RANGE)`` per gene (gene-specific capture), ``d_c ~ U(CELL_DEPTH_RANGE)`` per cell
    (depth change); each count ``x_cg`` becomes ``Binomial(x_cg, p_g * d_c)``.

    Parameters
    ----------
    counts
        Integer counts ``(n_cells, n_genes)``.
    seed
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    scipy.sparse.csr_matrix
        Thinned counts ``(n_cells, n_genes)``, float32.
    """
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(counts)
    gene_keep = rng.uniform(*GENE_KEEP_RANGE, size=counts.shape[1])
    cell_depth = rng.uniform(*CELL_DEPTH_RANGE, size=counts.shape[0])
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    keep = gene_keep[counts.indices] * cell_depth[rows]
    data = rng.binomial(np.rint(counts.data).astype(np.int64), keep).astype(np.float32)
    out = sp.csr_matrix((data, counts.indices.copy(), counts.indptr.copy()), shape=counts.shape)
    out.eliminate_zeros()
    return out


def worm_design(n_cells: int | None = None) -> Design:
    """Design (b) (see the module docstring); ``n_cells`` subsamples first (``--quick``)."""
    adata = load_worm_neurons()
    if n_cells is not None:
        keep = np.sort(np.random.default_rng(SPLIT_SEED).choice(adata.n_obs, n_cells, replace=False))
        adata = adata[keep].copy()
    adata = select_hvg_counts(adata, 2000, 3)
    perm = np.random.default_rng(SPLIT_SEED).permutation(adata.n_obs)
    half = adata.n_obs // 2
    ref_idx, query_idx = np.sort(perm[:half]), np.sort(perm[half:])
    labels = adata.obs[LABEL].astype(str)
    ref_idx = ref_idx[labels.iloc[ref_idx].to_numpy() != REMOVED_TYPE]
    reference = _counts_only(adata[ref_idx], labels.iloc[ref_idx], REFERENCE_BATCH["worm"])
    query = _counts_only(adata[query_idx], labels.iloc[query_idx], QUERY_BATCH["worm"])
    query.X = site_effect(query.X)
    # Thinning can leave a cell with no counts at all; such a cell carries nothing to map, and scamort refuses
    # it, so every tool gets the query without them.
    query = query[np.asarray(query.X.sum(1)).ravel() > 0].copy()
    return Design("worm", reference, query, None)


def bmmc_design() -> Design:
    """Design (a) (see the module docstring)."""
    adata = scamort.datasets.bmmc_cite()
    batch = adata.obs[BATCH].astype(str).to_numpy()
    ref, query = adata[batch == REFERENCE_BATCH["bmmc"]], adata[batch == QUERY_BATCH["bmmc"]]
    reference = _counts_only(ref, ref.obs["cell_type"], REFERENCE_BATCH["bmmc"])
    reference.obsm[PROTEIN] = ref.obsm[PROTEIN].copy()
    query_rna = _counts_only(query, query.obs["cell_type"], QUERY_BATCH["bmmc"])
    return Design("bmmc", reference, query_rna, query.obsm[PROTEIN].copy())
