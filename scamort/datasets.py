"""Small real datasets that ship inside the package (see data/README.md for sources and licences)."""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad

if TYPE_CHECKING:
    import mudata

__all__ = ["bmmc_cite", "bmmc_multiome", "bundled_path", "worm_neurons"]


def bundled_path(filename: str) -> Path:
    """Path of a bundled file: inside the installed package, or ``data/`` of a source checkout.

    Parameters
    ----------
    filename
        Name of the file (as in ``data/README.md``).
    """
    installed = resources.files("scamort") / "_bundled" / filename
    if installed.is_file():
        return Path(str(installed))
    checkout = Path(__file__).resolve().parent.parent / "data" / filename
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"Bundled file {filename!r} is missing from this scamort installation.")


def worm_neurons() -> ad.AnnData:
    """Caenorhabditis elegans neurons from sci-RNA-seq: 4186 cells × 13488 genes, raw counts.

    The data of Cao et al. (2017); ``obs["label"]`` holds the 10 neuron classes. Source: github
    ttgump/scDeepCluster (Apache-2.0).
    """
    return ad.read_h5ad(bundled_path("worm_neuron_cao2017_4186.h5ad"))


def bmmc_cite() -> ad.AnnData:
    """Bone-marrow CITE-seq (NeurIPS 2021, GSE194122 starter subset): 600 cells, raw counts.

    RNA: 1000 genes in ``X`` (and ``layers["counts"]``); protein: 134 ADT counts in
    ``obsm["protein_expression"]`` (DataFrame). ``obs``: ``cell_type`` (41), ``batch`` (2 donors/sites),
    ``phase``. Source: openproblems-bio/neurips2021_multimodal_viash (MIT).
    """
    return ad.read_h5ad(bundled_path("bmmc_cite_starter.rna_protein.h5ad"))


def bmmc_multiome() -> mudata.MuData:
    """Bone-marrow 10x Multiome (NeurIPS 2021, GSE194122 starter subset): 500 cells, paired, raw counts.

    A MuData with modalities ``"rna"`` (600 genes) and ``"atac"`` (600 peaks, integer fragment counts,
    not binarised), the same cells in the same order. ``obs`` (of the MuData and of each modality):
    ``cell_type`` (21) and ``batch`` (2 donors/sites). The peaks carry little cell-type signal on their
    own. Source: openproblems-bio/neurips2021_multimodal_viash (MIT).
    """
    import mudata

    rna = ad.read_h5ad(bundled_path("bmmc_multiome_starter.rna.h5ad"))
    atac = ad.read_h5ad(bundled_path("bmmc_multiome_starter.atac.h5ad"))
    with warnings.catch_warnings():  # mudata's notice about its future obs/var update behaviour
        warnings.simplefilter("ignore")
        mdata = mudata.MuData({"rna": rna, "atac": atac})
        for column in ("cell_type", "batch"):
            mdata.obs[column] = rna.obs[column].to_numpy()
    return mdata
