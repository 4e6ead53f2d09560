"""Write the ``--help`` text of ``scamort`` and of each of its commands, for the CLI page.

The texts come from the package's own argparse parser (``scamort.cli.build_parser``) at build time, so the
documented usage is always the installed one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers of ``parser``, by command name, in the order they were added."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def write_help_texts(target: Path) -> list[Path]:
    """Write ``scamort.txt`` and ``<command>.txt`` (each the ``--help`` output) into ``target``.

    Parameters
    ----------
    target
        Folder receiving the text files (created if needed).

    Returns
    -------
    list of Path
        The files written, the top-level help first.
    """
    from scamort.cli import build_parser

    target.mkdir(parents=True, exist_ok=True)
    parser = build_parser()
    written = []
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "82"  # argparse wraps to the terminal width: fix it to the page's
    try:
        for name, sub in [("scamort", parser), *_commands(parser).items()]:
            path = target / f"{name}.txt"
            text = sub.format_help()
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
            written.append(path)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return written
