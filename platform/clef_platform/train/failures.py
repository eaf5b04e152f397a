"""Which training failures a worker-group restart can heal.

Ray Train's own policy retries every worker-group error alike (it has no hook for the error's
kind), so the driver runs Ray with no retries of its own and restarts the group itself
(run.py) only when `cannot_heal(error)` is None:

- healable: a lost worker (its actor died: SIGKILL, OOM, a lost host) and what its peers see
  then (gloo/NCCL collectives that fail with RuntimeError or ConnectionError);
- cannot heal, fail at once: any rank that raised a bad value or damaged data (ValueError:
  DatasetError, ShardError, RecordError, ExportError, UsageError), a storage that cannot be
  written (PermissionError, a read-only or full file system), or a programming error
  (TypeError, KeyError, AttributeError, ImportError, NotImplementedError), also when a
  DataLoader worker raised it (torch then wraps it in a RuntimeError). One such rank dooms
  the run: the others' errors are collateral.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator

FATAL_TYPES = (ValueError, PermissionError, TypeError, KeyError, AttributeError, ImportError,
               NotImplementedError, FileNotFoundError, IsADirectoryError, NotADirectoryError)
FATAL_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _causes(e: BaseException | None, depth: int = 0) -> Iterator[BaseException]:
    """`e` and what it wraps: `__cause__`, `__context__`, a RayTaskError's `cause`, and the
    rank's own exception inside Ray Train V2's `UserExceptionWithTraceback` (`_base_exc`: it
    has no public accessor in Ray 2.60; without it every rank's error looks alike)."""
    if e is None or depth > 8:
        return
    yield e
    for inner in (getattr(e, "_base_exc", None), getattr(e, "cause", None), e.__cause__,
                  e.__context__):
        if isinstance(inner, BaseException) and inner is not e:
            yield from _causes(inner, depth + 1)


def _worker_errors(error: BaseException) -> list[BaseException]:
    failures = getattr(error, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        return list(failures.values())
    return [error]


# torch's DataLoader re-raises a loader worker's error as RuntimeError("Caught ShardError in
# DataLoader worker process 0. ...") when the class cannot be rebuilt from one message, so the
# class is known by its name only there.
_LOADER_WRAPPED = re.compile(r"Caught (\w+) in DataLoader worker process")
FATAL_NAMES = {t.__name__ for t in FATAL_TYPES} | {
    "DatasetError", "ShardError", "RecordError", "ExportError", "UsageError", "TableError"}


def cannot_heal(error: BaseException) -> BaseException | None:
    """The first error of a rank that a restart would only repeat, or None."""
    for worker_error in _worker_errors(error):
        for e in _causes(worker_error):
            if isinstance(e, FATAL_TYPES):
                return e
            wrapped = _LOADER_WRAPPED.search(str(e)) if isinstance(e, RuntimeError) else None
            if wrapped and wrapped.group(1) in FATAL_NAMES:
                return e
            if isinstance(e, OSError) and e.errno in FATAL_ERRNOS:
                return e
    return None


_USER_NAMES = {"DatasetError", "ShardError", "RecordError", "ExportError", "UsageError",
               "TableError"}


def is_user_error(e: BaseException) -> bool:
    """Bad data or a bad value of the user's (exit 2), also as a DataLoader worker's wrapper."""
    from clef_platform.cli import user_errors

    if isinstance(e, user_errors()):
        return True
    wrapped = _LOADER_WRAPPED.search(str(e)) if isinstance(e, RuntimeError) else None
    return bool(wrapped and wrapped.group(1) in _USER_NAMES)
