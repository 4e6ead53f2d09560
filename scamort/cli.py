"""The ``scamort`` command line: ``scamort demo``, ``scamort fit`` and ``scamort embed``.

Exit status: 0 on success, 2 for a usage or input error (one line on stderr, no traceback),
1 for an unexpected failure (one line too; ``-vv`` prints its traceback), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from scamort._version import __version__
from scamort.demo import DEFAULT_EPOCHS, QUICK_EPOCHS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anndata import AnnData

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

PROG = "scamort"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
OUTPUT_SUFFIXES = (".h5ad", ".h5mu", ".csv", ".parquet")
INPUT_SUFFIXES = (".h5ad", ".h5mu")
LIKELIHOODS = ("nb", "zinb", "poisson")

DESCRIPTION = """\
scamort: negative-binomial variational autoencoders for single-cell count data.

Train a model on an .h5ad file of raw counts, store each cell's latent representation in
.obsm (default key X_scamort), and embed new cells with a saved model."""

EPILOG = """\
examples:
  scamort demo                                  # train on the bundled worm data (~1-2 min)
  scamort demo --quick --out /tmp/demo          # a fast smoke run
  scamort fit cells.h5ad --out cells_scamort.h5ad --batch-key sample --model-dir model/
  scamort embed model/ new_cells.h5ad --out new_cells_scamort.h5ad

then, in Python:
  sc.pp.neighbors(adata, use_rep="X_scamort"); sc.tl.umap(adata)

run 'scamort COMMAND --help' for the options of a command."""

DEMO_EPILOG = """\
examples:
  scamort demo
  scamort demo --quick --out /tmp/scamort_demo --no-progress

writes worm_scamort.h5ad, umap.png, training_curve.png, metrics.json and model/ into --out."""

FIT_EPILOG = """\
examples:
  scamort fit cells.h5ad --out cells_scamort.h5ad
  scamort fit cells.h5ad --out cells_scamort.h5ad --layer counts --batch-key sample \\
      --epochs 200 --n-latent 20 --likelihood zinb --model-dir cells_model/
  scamort fit cells.h5ad --out embedding.parquet     # only the embedding table
  scamort fit cite.h5ad --out cite_scamort.h5ad --batch-key batch \\
      --modality rna=nb --modality prot=nb,obsm=protein_expression
  scamort fit panels.h5ad --out panels_scamort.h5ad --batch-key batch --modality rna=nb \
      --modality prot=nbmixture,obsm=protein_expression,measured=protein_expression_measured
  scamort fit multiome.h5mu --out multiome_scamort.h5mu \\
      --modality rna=nb --modality atac=bernoulli_depth,binarize --pretrain-modality rna

the input must hold raw counts (in .X or in --layer)."""

EMBED_EPILOG = """\
examples:
  scamort embed cells_model/ new_cells.h5ad --out new_cells_scamort.h5ad
  scamort embed cells_model/ new_cells.h5ad --out new_embedding.csv

the new cells need the genes (and batch column) the model was trained with."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line: ``scamort: error: <message>``."""

    def error(self, message: str) -> NoReturn:
        """Print a one-line usage error to stderr and exit with status 2."""
        hint = f"run '{self.prog} --help' for usage"
        self.exit(EXIT_USAGE, f"{PROG}: error: {_one_line(message)}; {hint}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``scamort`` argument parser with its ``demo``, ``fit`` and ``embed`` commands.

    Returns
    -------
    argparse.ArgumentParser
        The parser; each command's namespace has a ``handler`` callable.
    """
    parser = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = _Parser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="print progress messages (-vv: also debug messages and error tracebacks)",
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    _add_demo_parser(commands, common)
    _add_fit_parser(commands, common)
    _add_embed_parser(commands, common)
    return parser


def _add_demo_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``scamort demo``."""
    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="train on the bundled worm neuron data and write results and figures",
        description=_paragraph(
            "Train scamort on the bundled C. elegans neuron data (4186 cells; 2000 highly variable "
            "genes; 10% of the cells held out), cluster and draw a UMAP on the embedding, and "
            "report held-out ELBO and the agreement (ARI, NMI) of Leiden clusters with the "
            "published labels."
        ),
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("scamort_demo"),
        metavar="DIR",
        help="output folder (default: ./scamort_demo)",
    )
    demo.add_argument(
        "--epochs",
        type=_positive_int,
        metavar="N",
        help=f"training epochs (default: {DEFAULT_EPOCHS}; {QUICK_EPOCHS} with --quick)",
    )
    demo.add_argument(
        "--quick", action="store_true", help="a fast smoke run: few epochs, numbers not meaningful"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide the training progress bar")
    demo.set_defaults(handler=_run_demo, base_verbosity=1)


def _add_fit_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``scamort fit``."""
    fit = commands.add_parser(
        "fit",
        parents=[common],
        help="train a model on an .h5ad file and write the embedding",
        description=_paragraph(
            "Train a scamort model on the raw counts of INPUT and write INPUT with the latent "
            "representation of every cell in .obsm[KEY_ADDED] (posterior mean) to --out."
        ),
        epilog=FIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument(
        "input", type=Path, metavar="INPUT", help="an .h5ad (or .h5mu MuData) file of raw counts"
    )
    _add_output_arguments(fit)
    fit.add_argument("--layer", metavar="L", help="layer holding the counts (default: .X)")
    fit.add_argument("--batch-key", metavar="K", help=".obs column with the batch of each cell")
    fit.add_argument("--epochs", type=_positive_int, metavar="N", help="maximum epochs (default: scamort's)")
    fit.add_argument(
        "--n-latent",
        type=_positive_int,
        default=10,
        metavar="D",
        help="latent dimensions (default: 10)",
    )
    fit.add_argument("--likelihood", choices=LIKELIHOODS, help="count likelihood (default: nb)")
    fit.add_argument(
        "--modality",
        action="append",
        type=_modality,
        metavar="SPEC",
        help="model several modalities, one --modality per modality: "
        "NAME=LIKELIHOOD[,layer=L][,obsm=K][,present=COLUMN][,measured=MASK][,binarize] (e.g. "
        "--modality rna=nb --modality prot=nb,obsm=protein_expression); measured= names a feature mask "
        "(different panels per batch, e.g. from scamort.pp.concat_panels); with an .h5mu input the "
        "NAMEs are its modalities",
    )
    fit.add_argument(
        "--pretrain-modality",
        metavar="NAME",
        help="with several modalities: train on NAME alone first, then on all with NAME's encoder kept "
        "(for a second modality that adds little structure, e.g. a few hundred peaks)",
    )
    fit.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    fit.add_argument("--model-dir", type=Path, metavar="DIR", help="also save the trained model here")
    fit.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    fit.add_argument("--no-progress", action="store_true", help="hide the training progress bar")
    fit.set_defaults(handler=_run_fit, base_verbosity=0)


def _add_embed_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``scamort embed``."""
    embed = commands.add_parser(
        "embed",
        parents=[common],
        help="embed new cells with a saved model",
        description=_paragraph(
            "Load the model saved in MODEL_DIR (by 'scamort fit --model-dir' or model.save) and "
            "write INPUT with each cell's latent representation in .obsm[KEY_ADDED] to --out."
        ),
        epilog=EMBED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    embed.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="a saved scamort model")
    embed.add_argument("input", type=Path, metavar="INPUT", help="an .h5ad (or .h5mu) file of raw counts")
    _add_output_arguments(embed)
    embed.set_defaults(handler=_run_embed, base_verbosity=0)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--out``, ``--key-added`` and ``--overwrite``."""
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="OUT",
        help=(
            "output file: .h5ad (INPUT plus the embedding) or .csv / .parquet "
            "(only the embedding, one row per cell)"
        ),
    )
    parser.add_argument(
        "--key-added",
        default="X_scamort",
        metavar="KEY",
        help=".obsm key for the embedding (default: X_scamort)",
    )
    parser.add_argument(
        "--refine-steps",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help=(
            "refine each cell's posterior by N gradient steps on its own ELBO before taking its mean "
            "(semi-amortized inference; default 0: the encoders' posterior)"
        ),
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists (for fit also a saved model in --model-dir; never other files)",
    )


def _modality(text: str) -> tuple[str, object]:
    """Parse ``NAME=LIKELIHOOD[,layer=L][,obsm=K][,binarize]`` into ``(name, scamort.Modality)``."""
    from scamort.data.modality import Modality

    name, _, rest = text.partition("=")
    parts = [p for p in rest.split(",") if p]
    if not name or not parts:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=LIKELIHOOD[,layer=L][,obsm=K][,binarize]")
    options: dict[str, object] = {"likelihood": parts[0]}
    keys = {"layer": "layer", "obsm": "obsm_key", "present": "present_key", "measured": "measured_key"}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key == "binarize" and not value:
            options["binarize"] = True
        elif key in keys and value:
            options[keys[key]] = value
        else:
            raise argparse.ArgumentTypeError(f"unknown modality option {part!r} in {text!r}")
    try:
        return name, Modality(**options)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _whole_number(text: str, minimum: int) -> int:
    """Parse a whole number >= ``minimum`` from the command line."""
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"a whole number >= {minimum}"
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    """Parse a whole number >= 0 from the command line."""
    return _whole_number(text, 0)


def _positive_int(text: str) -> int:
    """Parse a positive integer command-line value."""
    return _whole_number(text, 1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scamort`` command line.

    Parameters
    ----------
    argv
        Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 2 for usage or input errors, 1 for an unexpected failure, 130 when
        interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version and usage errors
        return _exit_code(exit_request.code)
    handler: Callable[[argparse.Namespace], None] = args.handler
    log_handler = _configure_logging(verbosity=args.verbose + args.base_verbosity)
    try:
        handler(args)
    except (ValueError, KeyError, OSError) as exc:
        logger.debug("Details of the error:", exc_info=True)
        print(f"{PROG}: error: {_error_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an environment failure: still one line, details with -vv
        logger.debug("Details of the error:", exc_info=True)
        print(
            f"{PROG}: error: unexpected {type(exc).__name__}: {_error_message(exc)[:300]} "
            "(rerun with -vv for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        _remove_logging(log_handler)
    return EXIT_OK


def _exit_code(code: object) -> int:
    """Turn a ``SystemExit.code`` into an integer exit status."""
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_USAGE


def _error_message(exc: BaseException) -> str:
    """A one-line message for ``exc`` (a KeyError's message without the quotes it adds)."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return _one_line(text)


def _paragraph(text: str) -> str:
    """Wrap a help paragraph to 88 columns (the raw help formatter keeps line breaks as given)."""
    return textwrap.fill(text, width=88)


def _one_line(text: str) -> str:
    """Collapse whitespace, newlines included, to single spaces."""
    return " ".join(text.split())


def _configure_logging(*, verbosity: int) -> logging.Handler:
    """Send scamort's log messages to the current stderr; return the handler to remove later.

    Warnings only by default, progress messages with ``verbosity`` 1, debug messages (and
    tracebacks of input errors) with 2.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("scamort")
    package_logger.addHandler(handler)
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    package_logger.setLevel(level)
    return handler


def _remove_logging(handler: logging.Handler) -> None:
    """Undo :func:`_configure_logging`."""
    package_logger = logging.getLogger("scamort")
    package_logger.removeHandler(handler)
    package_logger.setLevel(logging.NOTSET)
    handler.close()


def _run_demo(args: argparse.Namespace) -> None:
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


def _run_fit(args: argparse.Namespace) -> None:
    """``scamort fit``."""
    import scamort
    from scamort.export import check_key_added, embed
    from scamort.io import check_save_target

    _check_single_modality_options(args)
    check_key_added(args.key_added)
    _check_output(args.out, overwrite=args.overwrite)
    if args.model_dir is not None:
        check_save_target(args.model_dir, overwrite=args.overwrite)
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


def _run_embed(args: argparse.Namespace) -> None:
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


def _read_h5ad(path: Path) -> AnnData:
    """Read an .h5ad (or .h5mu) file, with a clear error when it is missing."""
    import anndata

    if not path.is_file():
        raise FileNotFoundError(f"Input file {path} does not exist.")
    if path.suffix.lower() not in INPUT_SUFFIXES:
        raise ValueError(f"Input file {path} is not an .h5ad or .h5mu file.")
    if path.suffix.lower() == ".h5mu":
        import mudata

        # The command line owns its process: adopt mudata's coming default (no pulling of modality
        # columns into .obs on update) instead of printing its FutureWarning on every read and write.
        mudata.set_options(pull_on_update=False)
        return mudata.read_h5mu(path)
    adata = anndata.read_h5ad(path)
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
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The folder of the output file {path} does not exist.")
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


if __name__ == "__main__":
    raise SystemExit(main())
