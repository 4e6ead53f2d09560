"""Tools: functions that take ``adata`` first and write results into it (like ``scanpy.tl``).

Examples
--------
>>> import scamort, scanpy as sc
>>> scamort.tl.embed(adata, model)  # writes adata.obsm["X_scamort"]
>>> sc.pp.neighbors(adata, use_rep="X_scamort")
>>> scamort.tl.write_embedding(adata, "embedding.parquet")
>>> scamort.tl.transfer_labels(query, model)  # writes query.obs["scamort_label"], with confidences
"""

from __future__ import annotations

from scamort.export import amortization_gap, embed, write_embedding
from scamort.labels import transfer_labels

__all__ = ["amortization_gap", "embed", "transfer_labels", "write_embedding"]
