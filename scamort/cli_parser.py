"""The ``scamort`` argument parser: its commands, options, help texts and value types.

Usage errors are one line (``scamort: error: <message>; run 'scamort --help' for usage``) with exit
status 2; each command's namespace carries its ``handler`` from :mod:`scamort.cli_commands`.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any, NoReturn

from scamort._version import __version__
from scamort.cli_commands import MAP_REFINE_STEPS, PROG, demo_command, embed_command, fit_command, map_command
from scamort.demo import DEFAULT_EPOCHS, QUICK_EPOCHS

__all__ = [
    "DEMO_EPILOG",
    "EMBED_EPILOG",
    "EPILOG",
    "EXIT_USAGE",
    "FIT_EPILOG",
    "MAP_EPILOG",
    "build_parser",
    "modality_spec",
    "non_negative_int",
    "one_line",
    "positive_int",
]

EXIT_USAGE = 2
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
  scamort map model/ query.h5ad --out query_scamort.h5ad   # new batches: reference mapping

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
  scamort fit panels.h5ad --out panels_scamort.h5ad --batch-key batch --modality rna=nb \\
      --modality prot=nbmixture,obsm=protein_expression,measured=protein_expression_measured
  scamort fit multiome.h5mu --out multiome_scamort.h5mu \\
      --modality rna=nb --modality atac=bernoulli_depth,binarize --pretrain-modality rna

the input must hold raw counts (in .X or in --layer)."""

EMBED_EPILOG = """\
examples:
  scamort embed cells_model/ new_cells.h5ad --out new_cells_scamort.h5ad
  scamort embed cells_model/ new_cells.h5ad --out new_embedding.csv

the new cells need the genes (and batch column) the model was trained with."""

MAP_EPILOG = """\
examples:
  scamort map atlas_model/ query.h5ad --out query_scamort.h5ad
  scamort map atlas_model/ query.h5ad --out query_scamort.h5ad --batch-key sample \\
      --max-epochs 50 --refine --model-dir query_model/

the query's genes are matched by name: missing ones count as unmeasured, extra ones are dropped;
its batches may be new (they get new weights) or the reference's; the reference stays as saved."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line: ``scamort: error: <message>``."""

    def error(self, message: str) -> NoReturn:
        """Print a one-line usage error to stderr and exit with status 2."""
        hint = f"run '{self.prog} --help' for usage"
        self.exit(EXIT_USAGE, f"{PROG}: error: {one_line(message)}; {hint}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``scamort`` argument parser with its ``demo``, ``fit``, ``embed`` and ``map`` commands.

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
    _add_map_parser(commands, common)
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
        type=positive_int,
        metavar="N",
        help=f"training epochs (default: {DEFAULT_EPOCHS}; {QUICK_EPOCHS} with --quick)",
    )
    demo.add_argument(
        "--quick", action="store_true", help="a fast smoke run: few epochs, numbers not meaningful"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide the training progress bar")
    demo.set_defaults(handler=demo_command, base_verbosity=1)


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
    fit.add_argument("--epochs", type=positive_int, metavar="N", help="maximum epochs (default: scamort's)")
    fit.add_argument(
        "--n-latent",
        type=positive_int,
        default=10,
        metavar="D",
        help="latent dimensions (default: 10)",
    )
    fit.add_argument("--likelihood", choices=LIKELIHOODS, help="count likelihood (default: nb)")
    fit.add_argument(
        "--modality",
        action="append",
        type=modality_spec,
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
    fit.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    fit.add_argument("--no-progress", action="store_true", help="hide the training progress bar")
    fit.set_defaults(handler=fit_command, base_verbosity=0)


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
    embed.set_defaults(handler=embed_command, base_verbosity=0)


def _add_map_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``scamort map``."""
    mapping = commands.add_parser(
        "map",
        parents=[common],
        help="map query cells onto a saved reference model (new batches allowed)",
        description=_paragraph(
            "Map the cells of INPUT onto the reference model saved in REFERENCE_DIR (scArches-style: "
            "the reference's weights stay frozen, the query's new batches get new weights, which are "
            "trained on INPUT alone) and write INPUT with each cell's latent representation in "
            ".obsm[KEY_ADDED] to --out. The reference's cells are not needed."
        ),
        epilog=MAP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mapping.add_argument("reference_dir", type=Path, metavar="REFERENCE_DIR", help="a saved scamort model")
    mapping.add_argument("input", type=Path, metavar="INPUT", help="an .h5ad (or .h5mu) file of raw counts")
    _add_output_arguments(mapping)
    mapping.add_argument(
        "--batch-key", metavar="K", help="the query's batch column (default: the reference's batch key)"
    )
    mapping.add_argument(
        "--max-epochs", type=positive_int, metavar="N", help="maximum epochs (default: mapping's, 100)"
    )
    mapping.add_argument(
        "--refine",
        action="store_true",
        help=f"refine each query cell's posterior ({MAP_REFINE_STEPS} steps) before taking its mean",
    )
    mapping.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    mapping.add_argument("--model-dir", type=Path, metavar="DIR", help="also save the query model here")
    mapping.add_argument("--seed", type=non_negative_int, help="random seed (default: the reference's)")
    mapping.add_argument("--no-progress", action="store_true", help="hide the training progress bar")
    mapping.add_argument(
        "--labels-key-added",
        default="scamort_label",
        metavar="KEY",
        help="obs column for the labels predicted from a reference trained with labels_key (its confidence "
        "goes to KEY_confidence, its novelty score to KEY_novelty; default scamort_label)",
    )
    mapping.set_defaults(handler=map_command, base_verbosity=0)


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
        type=non_negative_int,
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


def modality_spec(text: str) -> tuple[str, object]:
    """Parse ``NAME=LIKELIHOOD[,layer=L][,obsm=K][,present=COLUMN][,measured=MASK][,binarize]``.

    Returns ``(name, scamort.Modality)``.
    """
    from scamort.data.modality import Modality

    name, _, rest = text.partition("=")
    parts = [p for p in rest.split(",") if p]
    if not name or not parts:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=LIKELIHOOD[,layer=L][,obsm=K][,present=COLUMN][,measured=MASK][,binarize]"
        )
    options: dict[str, Any] = {"likelihood": parts[0]}
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


def non_negative_int(text: str) -> int:
    """Parse a whole number >= 0 from the command line."""
    return _whole_number(text, 0)


def positive_int(text: str) -> int:
    """Parse a positive integer command-line value."""
    return _whole_number(text, 1)


def _paragraph(text: str) -> str:
    """Wrap a help paragraph to 88 columns (the raw help formatter keeps line breaks as given)."""
    return textwrap.fill(text, width=88)


def one_line(text: str) -> str:
    """Collapse whitespace, newlines included, to single spaces."""
    return " ".join(text.split())
