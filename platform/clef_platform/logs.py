"""Logging setup of every job, with credentials masked at every level.

`setup(level)` puts one stderr handler on the root logger whose formatter masks credentials in
the finished line (message, arguments and traceback alike), so boto's and botocore's DEBUG
output, which prints request headers and the session token, is masked too. What counts as a
credential:

- the value of every environment variable whose name says it is one (`*SECRET*`, `*TOKEN*`,
  `*PASSWORD*`, `*ACCESS_KEY*`, `*CREDENTIAL*`, `*AUTH*`), read when a line is formatted;
- values registered with `register_secret` (a password given on the command line);
- anything shaped like one: AWS access key ids (AKIA/ASIA...), the password of a URL
  (`scheme://user:PASSWORD@host`), `password=...` in a Redis connection string, SigV4
  `Signature=...` and `X-Amz-Security-Token` values.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from pathlib import Path

MASK = "***"
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|CREDENTIAL|AUTH", re.I)
_PATTERNS = [
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),                         # AWS access key id
    re.compile(r"(?<=://)[^/\s:@]*:([^@\s/]+)(?=@)"),                     # URL password
    re.compile(r"(?i)(?<=password=)[^,\s'\"&]+"),                         # redis / query string
    re.compile(r"(?i)(?<=signature=)[0-9a-f]+"),                          # SigV4 signature
    re.compile(r"(?i)(?<=x-amz-security-token['\"]: b['\"])[^'\"]+"),     # botocore headers
    re.compile(r"(?i)(?<=x-amz-security-token=)[^&\s'\"]+"),              # presigned URLs
]
_MIN_SECRET = 6          # shorter values ("1", "true") would mask ordinary words
_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask `value` wherever it appears from now on (e.g. a password given as an option)."""
    if value and len(value) >= _MIN_SECRET:
        _registered.add(value)


def _secrets() -> list[str]:
    env = [v for k, v in os.environ.items()
           if _SECRET_NAME.search(k) and v and len(v) >= _MIN_SECRET]
    # Longest first, so that a secret containing another is masked whole.
    return sorted(set(env) | _registered, key=len, reverse=True)


def mask(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: _sub(m), text)
    return text


def _sub(m: re.Match) -> str:
    # The URL pattern captures only the password; the others match the secret itself.
    if m.groups():
        start, end = m.span(1)
        whole = m.group(0)
        return whole[:start - m.start()] + MASK + whole[end - m.start():]
    return MASK


class MaskingFormatter(logging.Formatter):
    """Formats as usual, then masks: the finished line is what leaves the process.

    `tracebacks=False` (the stderr handler): a record's traceback becomes one line naming the
    error and the log file that holds it in full; stderr never shows a traceback."""

    def __init__(self, fmt: str = None, tracebacks: bool = True, details: str = ""):
        super().__init__(fmt)
        self.tracebacks, self.details = tracebacks, details

    def formatException(self, ei) -> str:  # noqa: N802 - logging's hook
        if self.tracebacks:
            return super().formatException(ei)
        where = f"; traceback in {self.details}" if self.details else ""
        return f"  ({ei[0].__name__}: {' '.join(str(ei[1]).split())[:300]}{where})"

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return super().formatStack(stack_info) if self.tracebacks else ""

    def format(self, record: logging.LogRecord) -> str:
        if not self.tracebacks:
            # logging caches the formatted traceback on the record for every handler.
            record = logging.makeLogRecord({**record.__dict__, "exc_text": None})
        return mask(super().format(record))


class _PrivateFileHandler(logging.FileHandler):
    """A log file only its owner can read, opened on the first line (none when all is well)."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True)

    def _open(self):
        return open(os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                    "a", encoding="utf-8")


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_file(prog: str | None = None) -> Path:
    """The job's log file: $CLEF_LOG_DIR (default <temp>/clef-logs)/<prog>-<pid>.log."""
    prog = prog or Path(sys.argv[0] or "python").stem
    folder = Path(os.environ.get("CLEF_LOG_DIR") or Path(tempfile.gettempdir()) / "clef-logs")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{prog}-{os.getpid()}.log"


def setup(level: str | int = "INFO", quiet: tuple[str, ...] = ()) -> None:
    """Root logging for a job: a masked stderr handler at `level` that shows no tracebacks, and
    the job's log file (mode 0600, created on its first line) with WARNING and above in full,
    tracebacks included; `quiet` loggers at WARNING (a library's chatter the job does not
    need)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    path = log_file()
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter(FORMAT, tracebacks=False, details=str(path)))
    root.addHandler(handler)
    details = _PrivateFileHandler(path)
    details.setLevel(logging.WARNING)
    details.setFormatter(MaskingFormatter(FORMAT))
    root.addHandler(details)
    root.setLevel(level)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
