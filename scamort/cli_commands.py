"""What each ``scamort`` command does once its arguments are parsed: ``demo``, ``fit``, ``embed``, ``map``.

Each ``*_command`` takes the parsed :class:`argparse.Namespace` (built by :mod:`scamort.cli_parser`),
checks the files it will read and write before any work, and raises ``ValueError``, ``KeyError`` or
``OSError`` with a one-line message for :func:`scamort.cli.main` to print.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "INPUT_SUFFIXES",
    "MAP_REFINE_STEPS",
    "OUTPUT_SUFFIXES",
    "PROG",
    "demo_command",
    "embed_command",
    "fit_command",
    "map_command",
]

logger = logging.getLogger(__name__)

PROG = "scamort"
OUTPUT_SUFFIXES = (".h5ad", ".h5mu", ".csv", ".parquet")
INPUT_SUFFIXES = (".h5ad", ".h5mu")
#: Refinement steps of ``scamort map --refine``.
MAP_REFINE_STEPS = 20


def demo_command(args: argparse.Namespace) -> None:
    """``scamort demo``."""
    from scamort.demo import run_demo

    result = run_demo(
        args.out,
        max_epochs=args.epochs,
        quick=args.quick,
        progress_bar=not args.no_progress,
        seed=args.seed,
    )
    metrics = result.metrics
    print(f"{PROG}: wrote the demo results to {result.out_dir}/")
    for path in result.files.values():
        print(f"  {path}")
    print(
        f"  held-out ELBO per cell {metrics['heldout_elbo_per_cell']:.2f}, "
        f"ARI {metrics['ari']:.3f}, NMI {metrics['nmi']:.3f}, "
        f"{metrics['epochs_run']} epochs in {metrics['train_seconds']:.1f} s"
    )


def fit_command(args: argparse.Namespace) -> None:
    """``scamort fit``."""
    import scamort
    from scamort.cli_checks import check_unique_modalities
    from scamort.export import embed

    _check_single_modality_options(args)
    check_unique_modalities(args.modality)
    _check_targets(args)
    adata = _read_h5ad(args.input)
    _check_output_kind(adata, args.out)
    model = scamort.Model(
        adata,
        layer=args.layer,
        batch_key=args.batch_key,
        n_latent=args.n_latent,
        likelihood=args.likelihood or "nb",
        seed=args.seed,
        modalities=dict(args.modality) if args.modality else None,
    )
    history = model.train(
        max_epochs=args.epochs,
        progress_bar=not args.no_progress,
        device=args.device,
        pretrain_modality=args.pretrain_modality,
    )
    logger.info("Trained for %d epochs.", len(history))
    embed(adata, model, key_added=args.key_added, refine_steps=args.refine_steps)
    _write_result(adata, args.out, key=args.key_added)
    if args.model_dir is not None:
        model.save(args.model_dir, overwrite=args.overwrite)
        print(f"{PROG}: saved the model to {args.model_dir}")


def embed_command(args: argparse.Namespace) -> None:
    """``scamort embed``."""
    import scamort
    from scamort.export import check_key_added, embed

    if not args.model_dir.is_dir():
        raise FileNotFoundError(f"No saved model folder at {args.model_dir}.")
    check_key_added(args.key_added)
    _check_output(args.out, overwrite=args.overwrite)
    adata = _read_h5ad(args.input)
    _check_output_kind(adata, args.out)
    model = scamort.Model.load(args.model_dir, adata)
    embed(adata, model, key_added=args.key_added, refine_steps=args.refine_steps)
    _write_result(adata, args.out, key=args.key_added)


def map_command(args: argparse.Namespace) -> None:
    """``scamort map``."""
    import scamort
    from scamort.export import embed
    from scamort.io import SPEC_FILE

    if not (args.reference_dir / SPEC_FILE).is_file():
        raise FileNotFoundError(f"No saved model folder at {args.reference_dir} (no {SPEC_FILE} in it).")
    _check_targets(args)
    query = _read_h5ad(args.input)
    _check_output_kind(query, args.out)
    model = scamort.Model.load_query_data(query, args.reference_dir, batch_key=args.batch_key, seed=args.seed)
    if any(parameter.requires_grad for parameter in model.module.parameters()):
        history = model.train(
            max_epochs=args.max_epochs, progress_bar=not args.no_progress, device=args.device
        )
        logger.info("Mapped the query in %d epochs.", len(history))
    else:
        logger.info("The query holds only the reference's batches: nothing to train.")
    steps = MAP_REFINE_STEPS if args.refine and not args.refine_steps else args.refine_steps
    embed(query, model, key_added=args.key_added, refine_steps=steps)
    if model.registry.labels_key is not None and getattr(model.module, "label_classifier", None) is not None:
        scamort.tl.transfer_labels(query, model, key_added=args.labels_key_added)
        logger.info("Wrote predicted labels, confidence and novelty to obs[%r].", args.labels_key_added)
    _write_result(query, args.out, key=args.key_added)
    if args.model_dir is not None:
        model.save(args.model_dir, overwrite=args.overwrite)
        print(f"{PROG}: saved the query model to {args.model_dir}")


def _check_targets(args: argparse.Namespace) -> None:
    """Before any work: the embedding's key, the output file and the optional model folder are usable."""
    from scamort.export import check_key_added
    from scamort.io import check_save_target

    check_key_added(args.key_added)
    _check_output(args.out, overwrite=args.overwrite)
    if args.model_dir is not None:
        check_save_target(args.model_dir, overwrite=args.overwrite)


def _read_h5ad(path: Path) -> AnnData:
    """Read an .h5ad (or .h5mu) file, with a clear error when it is missing."""
    import anndata

    from scamort.cli_checks import check_input_file, read_input

    check_input_file(path, INPUT_SUFFIXES)
    if path.suffix.lower() == ".h5mu":
        import mudata

        # The command line owns its process: adopt mudata's coming default (no pulling of modality
        # columns into .obs on update) instead of printing its FutureWarning on every read and write.
        mudata.set_options(pull_on_update=False)
        return read_input(path, mudata.read_h5mu)
    adata = read_input(path, anndata.read_h5ad)
    logger.info("Read %s: %d cells x %d genes.", path, adata.n_obs, adata.n_vars)
    return adata


def _check_single_modality_options(args: argparse.Namespace) -> None:
    """``--layer`` and ``--likelihood`` describe one RNA modality; each ``--modality`` spec names its own."""
    if not args.modality:
        return
    given = [flag for flag, value in (("--layer", args.layer), ("--likelihood", args.likelihood)) if value]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise ValueError(
            f"{' and '.join(given)} {verb} only without --modality; put the layer and likelihood in each "
            "--modality spec instead (e.g. --modality rna=zinb,layer=counts)."
        )


def _check_output(path: Path, *, overwrite: bool) -> None:
    """Fail before any work when ``path`` cannot be written."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        allowed = ", ".join(OUTPUT_SUFFIXES)
        raise ValueError(f"Output file {path} must end in one of {allowed}.")
    from scamort.cli_checks import check_output_folder

    check_output_folder(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"Output file {path} exists; pass --overwrite to replace it.")


def _check_output_kind(data: object, path: Path) -> None:
    """A MuData goes to .h5mu (or a table), an AnnData to .h5ad (or a table)."""
    is_mudata = type(data).__name__ == "MuData"
    suffix = path.suffix.lower()
    if (is_mudata and suffix == ".h5ad") or (not is_mudata and suffix == ".h5mu"):
        wanted = ".h5mu" if is_mudata else ".h5ad"
        raise ValueError(f"Output file {path} must end in {wanted} (or .csv / .parquet) for this input.")


def _write_result(adata: AnnData, path: Path, *, key: str) -> None:
    """Write ``adata`` (.h5ad) or only its embedding (.csv / .parquet) to ``path``."""
    from scamort.export import write_embedding

    if path.suffix.lower() in (".h5ad", ".h5mu"):
        adata.write(path)
    else:
        write_embedding(adata, path, key=key)
    n_cells, n_dims = adata.obsm[key].shape
    print(f"{PROG}: wrote {path} (.obsm[{key!r}]: {n_cells} cells x {n_dims} dimensions)")
