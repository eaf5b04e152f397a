"""The one command-line style of every job: typed options, one-line errors, exit codes.

    exit 0  success
    exit 1  an operational failure (storage, a server, a worker group that died): one line on
            stderr, the traceback in the job's log file (named on that line)
    exit 2  a user error (a bad option, YAML key, file, table, column): one line on stderr that
            names the culprit, before Ray or torch start wherever the check allows

Every job's `__main__` is `raise SystemExit(cli.main("ingest", main))`. Errors that are the
user's raise `UsageError` (or a subclass of one of `USER_ERRORS`); anything else is
operational. The argparse types below check ranges while the command line is parsed, so a bad
value never reaches Ray. Never a traceback on stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

log = logging.getLogger("clef_platform.cli")


class UsageError(ValueError):
    """A user error: a bad option, key, file, table or column. The message names it."""


class Failure(RuntimeError):
    """An operational failure whose message says everything (a failed stage named with its
    exit status): exit 1, no traceback to keep."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception classes that mean the input is wrong (exit 2), not that something broke.

    Imported lazily: the layout errors pull in pyarrow, which a failed parse never needs."""
    from clef_platform.layout.errors import DatasetError, ExportError

    return (UsageError, DatasetError, ExportError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`prog: error: ...`) and exit 2, usage left out:
    the option is named in the message and `--help` is one command away."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise UsageError(message)


# ---- argparse types: range checks at parse time ------------------------------------------------

def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: "
                                         f"{text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text!r}")
        return value
    parse.__name__ = f"int>={low}"          # argparse names the type in its message
    return parse


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def port(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return value


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def existing_dir(option: str, path: Path) -> Path:
    """`path` if it is a folder, else a UsageError naming the option."""
    if not path.exists():
        raise UsageError(f"{option} {path}: no such folder")
    if not path.is_dir():
        raise UsageError(f"{option} {path}: not a folder")
    return path


# ---- the entry point wrapper ------------------------------------------------------------------

def write_details(prog: str, e: BaseException) -> Path:
    """The traceback of `e` (masked) in the job's log file, readable by its owner only."""
    from clef_platform.logs import log_file, mask

    path = log_file(prog)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as f:
        f.write(mask("".join(traceback.format_exception(e))))
    return path


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text


def main(prog: str, job: Callable[[list[str] | None], int | None],
         argv: list[str] | None = None) -> int:
    """Runs `job(argv)` and turns its outcome into the exit status (module docstring)."""
    try:
        status = job(argv)
        return 0 if status is None else int(status)
    except SystemExit as e:          # --help, SIGTERM in a Ray session, or a chosen status
        if isinstance(e.code, str):
            print(f"{prog}: {e.code}", file=sys.stderr)
            return 1
        return 0 if e.code is None else e.code
    except Failure as e:
        print(f"{prog}: failed: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except user_errors() as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last resort: one line, details in the log file
        path = write_details(prog, e)
        print(f"{prog}: failed: {type(e).__name__}: {_one_line(e)} (details: {path})",
              file=sys.stderr)
        return 1
