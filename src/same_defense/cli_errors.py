"""One error style for every command line (``same-build``, ``same-serve``, ``same-client``,
``same-accounts``, ``same-gateway``, ``same-deploy``).

A refusal is one or two sentences on stderr, ``PROG: error: ...``, that name the flag or
command that fixes it, and a non-zero exit status. The Python traceback behind it helps the
project's developers, not the person who typed the command, so it is shown only with
``--debug`` (or ``SAME_DEBUG=1`` in the environment). Usage errors stay argparse's own
(status 2, with the usage line).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

DEBUG_ENV = "SAME_DEBUG"
# Longest message printed: an onnxruntime or Triton message quoted inside ours can run to
# kilobytes, and the sentence that says what to fix comes first.
MAX_MESSAGE_CHARS = 600


class CommandError(Exception):
    """A refusal whose message says what to fix; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the traceback of an error (the default is its message alone)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"on an error, show the Python traceback too (also {DEBUG_ENV}=1)",
    )


def wants_debug(argv: Sequence[str] | None) -> bool:
    """Whether ``argv`` (None: the command line) or the environment asks for tracebacks.

    Read before parsing, so that an error while parsing or setting up is covered too.
    """
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def short_message(exc: BaseException) -> str:
    """The exception's message on one line, at most MAX_MESSAGE_CHARS characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3].rstrip() + "..."
    return text


def _say(line: str) -> None:
    # stderr directly: this module is shared by the command lines, not one of them (T20).
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_command(
    prog: str,
    body: Callable[[], int],
    debug: bool,
    status: int = 1,
) -> int:
    """Run ``body`` and return its exit status; an exception becomes ``PROG: error: ...``.

    ``CommandError`` carries its own status; any other exception exits with ``status``.
    Exceptions that are not the usual refusals (ValueError, OSError, RuntimeError, ...) are
    most likely a bug: their message says so and points at ``--debug``.
    """
    try:
        return body()
    except KeyboardInterrupt:
        _say(f"{prog}: interrupted")
        return 130
    except CommandError as exc:
        if debug:
            raise
        _say(f"{prog}: error: {short_message(exc)}")
        return exc.status
    except (ValueError, OSError, RuntimeError, LookupError) as exc:
        if debug:
            raise
        _say(f"{prog}: error: {short_message(exc)}")
        return status
    except Exception as exc:
        if debug:
            raise
        _say(
            f"{prog}: error: unexpected {type(exc).__name__}: {short_message(exc)} "
            "(run again with --debug for the traceback)"
        )
        return status
