"""The ``scamort`` command line: ``scamort demo``, ``scamort fit`` and ``scamort embed``.

Exit status: 0 on success, 2 for a usage or input error (one line on stderr, no traceback),
1 for an unexpected failure (one line too; ``-vv`` prints its traceback), 130 when interrupted.
The parser is :mod:`scamort.cli_parser`, what each command does :mod:`scamort.cli_commands`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from scamort.cli_commands import PROG
from scamort.cli_parser import (
    DEMO_EPILOG,
    EMBED_EPILOG,
    EPILOG,
    EXIT_USAGE,
    FIT_EPILOG,
    MAP_EPILOG,
    build_parser,
    one_line,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["DEMO_EPILOG", "EMBED_EPILOG", "EPILOG", "FIT_EPILOG", "MAP_EPILOG", "build_parser", "main"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


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
    return one_line(text)


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


if __name__ == "__main__":
    raise SystemExit(main())
