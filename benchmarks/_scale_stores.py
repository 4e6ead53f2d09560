"""Grown data sets in every store the out-of-core path reads, for ``scale_cpu.py``.

- RNA (worm neurons, 2000 HVGs): bootstrap of cells with binomial thinning (:mod:`scamort.scale`),
  written to a ``.h5ad`` chunk by chunk and to a Zarr store (``AnnData.write_zarr``).
- CITE-seq (the bundled BMMC set: 1000 genes + 134 ADTs): the same bootstrap of cells, each copy's RNA and
  protein counts binomially thinned with their own per-cell probability in [0.5, 1], appended chunk by
  chunk to a ``.h5mu`` (modalities ``rna`` and ``prot``, both CSR) and, for the in-memory reference, the
  same cells as a MuData in memory.

``obs`` holds the cell names and the source cell's label only, so that what grows with the number of
cells in the user's object is the same across stores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

CHUNK = 65_536


def _thin(rng: np.random.Generator, block: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    block = block.copy()
    block.data = rng.binomial(block.data.astype(np.int64), np.repeat(keep, np.diff(block.indptr)))
    block.data = block.data.astype(np.float32)
    block.eliminate_zeros()
    return block


def _cite_source() -> tuple[sp.csr_matrix, sp.csr_matrix, pd.Series, list[str], list[str]]:
    import scamort.datasets

    source = scamort.datasets.bmmc_cite()
    protein = source.obsm["protein_expression"]
    return (
        sp.csr_matrix(source.layers["counts"], dtype=np.float32),
        sp.csr_matrix(protein.to_numpy(dtype=np.float32)),
        source.obs["cell_type"],
        list(map(str, source.var_names)),
        list(map(str, protein.columns)),
    )


def _cite_chunks(n_cells: int, seed: int) -> Iterator[tuple[sp.csr_matrix, sp.csr_matrix, pd.DataFrame]]:
    rna, protein, labels, _, _ = _cite_source()
    rng = np.random.default_rng(seed)
    for start in range(0, n_cells, CHUNK):
        size = min(CHUNK, n_cells - start)
        source = rng.integers(rna.shape[0], size=size)
        rna_block = _thin(rng, rna[source], rng.uniform(0.5, 1.0, size))
        protein_block = _thin(rng, protein[source], rng.uniform(0.5, 1.0, size))
        obs = pd.DataFrame(
            {"cell_type": pd.Categorical(labels.to_numpy()[source], categories=labels.cat.categories)},
            index=[f"cell{i}" for i in range(start, start + size)],
        )
        yield rna_block, protein_block, obs


def _mudata(rna: sp.csr_matrix, protein: sp.csr_matrix, obs: pd.DataFrame) -> md.MuData:
    _, _, _, genes, proteins = _cite_source()
    mods = {
        "rna": ad.AnnData(X=rna, obs=obs.copy(), var=pd.DataFrame(index=genes)),
        "prot": ad.AnnData(X=protein, obs=obs.copy(), var=pd.DataFrame(index=proteins)),
    }
    return md.MuData(mods)


def grow_cite(n_cells: int, seed: int) -> md.MuData:
    """The grown CITE-seq cells in memory (the same cells as :func:`grow_cite_to_h5mu`)."""
    parts = list(_cite_chunks(n_cells, seed))
    return _mudata(
        sp.vstack([p[0] for p in parts], format="csr"),
        sp.vstack([p[1] for p in parts], format="csr"),
        pd.concat([p[2] for p in parts]),
    )


def grow_cite_to_h5mu(n_cells: int, path: Path, seed: int) -> Path:
    """The grown CITE-seq cells appended chunk by chunk to a ``.h5mu`` (memory stays bounded)."""
    chunks = _cite_chunks(n_cells, seed)
    rna, protein, obs = next(chunks)
    _mudata(rna, protein, obs).write(path)
    frames = [obs]
    with h5py.File(path, "a") as handle:
        matrices = {name: ad.io.sparse_dataset(handle[f"mod/{name}/X"]) for name in ("rna", "prot")}
        for rna, protein, obs in chunks:
            matrices["rna"].append(rna)
            matrices["prot"].append(protein)
            frames.append(obs)
        obs = pd.concat(frames)
        for key in ("obs", "mod/rna/obs", "mod/prot/obs"):
            del handle[key]
            ad.io.write_elem(handle, key, obs)
        for name in ("rna", "prot"):  # every cell is in both modalities, in the MuData's order
            dtype = handle[f"obsmap/{name}"].dtype
            del handle[f"obsmap/{name}"], handle[f"obsm/{name}"]
            handle["obsmap"].create_dataset(name, data=np.arange(1, len(obs) + 1, dtype=dtype))
            handle["obsm"].create_dataset(name, data=np.ones((len(obs), 1), dtype=bool))
    return path


def grow_rna(n_cells: int, seed: int) -> ad.AnnData:
    """Worm neurons (2000 HVGs) grown to ``n_cells``; ``obs``: names and label."""
    from _common import load_worm_neurons, select_hvg_counts

    from scamort.scale import grow

    grown = grow(select_hvg_counts(load_worm_neurons()), n_cells, seed=seed, chunk_size=CHUNK)
    return ad.AnnData(X=grown.X, obs=grown.obs[["label"]], var=grown.var)


def write_rna(n_cells: int, workdir: Path, seed: int) -> dict[str, Path]:
    """The grown RNA cells as a ``.h5ad`` (written chunk by chunk) and a Zarr store."""
    from _common import load_worm_neurons, select_hvg_counts

    from scamort.scale import grow_to_h5ad

    h5ad = workdir / f"rna_{n_cells}.h5ad"
    zarr_path = workdir / f"rna_{n_cells}.zarr"
    if not h5ad.exists():
        grow_to_h5ad(select_hvg_counts(load_worm_neurons()), n_cells, h5ad, seed=seed, chunk_size=CHUNK)
        with h5py.File(h5ad, "a") as handle:  # keep names and label only, as in memory
            obs = ad.io.read_elem(handle["obs"])[["label"]]
            del handle["obs"]
            ad.io.write_elem(handle, "obs", obs)
    if not zarr_path.exists():
        ad.read_h5ad(h5ad).write_zarr(zarr_path)
    return {"h5ad": h5ad, "zarr": zarr_path}
