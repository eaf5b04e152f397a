"""Folder trees in object storage, and local mirrors of them on each host.

Some inputs are folders that libraries want on a local disk: a raw corpus of WFDB files (wfdb
reads paths) and a Feast repository (Feast opens a directory). On a cluster no host may read
another host's disk, so such a folder lives under a URL (`s3://bucket/prefix`) and each host that
needs it makes its own read-only copy:

    upload_tree(Path("out/features"), "s3://clef/features")   # the writer, once
    local = mirror("s3://clef/features")                      # every reader, on its host

`upload_tree` writes every file, then `_TREE.json` last (relative path -> SHA-256): the commit.
A reader's copy is named by the digest of that index, so a rebuilt tree gets a fresh copy and
an unchanged one is reused; each file is checked against its SHA-256. A prefix without an index
(a corpus a user synced up with `aws s3 sync`) is mirrored as listed, named by the listing.

Copies go under $CLEF_CACHE_DIR (default <tmp>/clef-cache): the same absolute path on every
host, which is what lets an ingest plan made by the driver name files that shard tasks on other
hosts find in their own copy. Plain paths and file:// URLs are returned as they are (no copy).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from clef_platform.digests import sha256_file
from clef_platform.storage import ObjectStore, open_store

log = logging.getLogger(__name__)
INDEX = "_TREE.json"
COMPLETE = ".clef-mirror-complete"


class MirrorError(RuntimeError):
    """A tree that cannot be mirrored as it is stored (names the URL and the file)."""


def is_remote(url: str | Path) -> bool:
    return str(url).startswith("s3://")


def cache_root() -> Path:
    return Path(os.environ.get("CLEF_CACHE_DIR") or Path(tempfile.gettempdir()) / "clef-cache")


def upload_tree(local: Path, url: str, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Upload every file under `local` (relative paths as keys, `exclude` left out), then the
    index. Returns the index (relative path -> SHA-256)."""
    local = Path(local)
    if not local.is_dir():
        raise MirrorError(f"{local} is not a folder")
    store = open_store(url)
    index: dict[str, str] = {}
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = path.relative_to(local).as_posix()
        if rel == INDEX or rel in exclude:
            continue
        store.put_file(rel, path)
        index[rel] = sha256_file(path)
    # written last: a reader that finds the index finds every file it names
    store.put_bytes(INDEX, json.dumps({"files": index}, indent=1, sort_keys=True).encode())
    log.info("uploaded %d files of %s to %s", len(index), local, url)
    return index


def _read_index(store: ObjectStore, url: str) -> tuple[dict[str, str | None], str]:
    """(relative path -> SHA-256 or None when unknown, version digest) of the stored tree."""
    if store.exists(INDEX):
        raw = store.get_bytes(INDEX)
        try:
            files = json.loads(raw)["files"]
        except (ValueError, KeyError, TypeError) as e:
            raise MirrorError(f"{url}/{INDEX} is not a tree index: {e}") from None
        return dict(files), hashlib.sha256(raw).hexdigest()
    keys = store.list("")
    if not keys:
        raise MirrorError(f"{url} holds no files")
    return {k: None for k in keys}, hashlib.sha256("\n".join(keys).encode()).hexdigest()


def mirror(url: str | Path) -> Path:
    """A local folder holding the tree at `url` (a plain path or file:// URL: itself)."""
    text = str(url)
    if not is_remote(text):
        return Path(text.removeprefix("file://"))
    store = open_store(text)
    files, version = _read_index(store, text)
    name = hashlib.sha256(f"{text.rstrip('/')}\n{version}".encode()).hexdigest()[:20]
    root = cache_root()
    final = root / name
    if (final / COMPLETE).exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    # One copy per host even when several processes (shard tasks) ask at once.
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / COMPLETE).exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            for rel, want in sorted(files.items()):
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with store.open(rel) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                if want is not None and sha256_file(target) != want:
                    raise MirrorError(f"{text}/{rel}: SHA-256 differs from {INDEX}")
            (tmp / COMPLETE).write_text(version + "\n")
            if final.exists():              # a copy an earlier process left half-made
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    log.info("mirrored %d files of %s to %s", len(files), text, final)
    return final
