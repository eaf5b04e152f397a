"""Object storage: a local folder (`file://...` or a plain path) or `s3://bucket/prefix` (boto3).

Keys are relative, '/'-separated names under the store's root. Writes are atomic per object:
locally a temp file in the same folder then `os.replace`; on S3 a PUT (or multipart upload) only
becomes visible when complete. Endpoint, region and credentials for S3 come from the standard AWS
configuration chain (environment such as AWS_ENDPOINT_URL, ~/.aws, instance metadata), never from
code, and are never logged.

`python -m clef_platform.storage cat URL` streams an object to stdout: webdataset reads S3 shards
through `pipe:` URLs built on it, so no AWS CLI is needed.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import tempfile
import uuid
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def _check_key(key: str) -> str:
    """Refuse keys that could escape the root (keys may be built from data)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key


def _fsync_dir(path: Path) -> None:
    """Make a rename or link in `path` durable (POSIX: the directory entry needs its own fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ObjectStore(ABC):
    """A flat key -> bytes store rooted at `url`."""

    url: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def writer(self, key: str) -> "AbstractContextManager[BinaryIO]":
        """A binary file to write an object into, as `with store.writer(key) as f:`. The object
        appears under `key` whole when the block ends, and not at all if the block raises."""

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file atomically (the file is left in place)."""
        with open(path, "rb") as src, self.writer(key) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    @abstractmethod
    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` only if no object has that key; True if this call created it.

        The commit primitive for claims, markers and results: of two writers racing for the
        same key exactly one wins (local: a hard link, which fails if the name exists; S3: a
        conditional PUT with If-None-Match: *)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable binary stream (caller closes it)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; a missing object is not an error."""

    @abstractmethod
    def reader_url(self, key: str) -> str:
        """A URL `webdataset` can open: a local path or a `pipe:` command."""

    def full_url(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{_check_key(key)}"


class LocalStore(ObjectStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    @contextmanager
    def _staged(self, key: str) -> Iterator[tuple[Path, Path]]:
        """(the key's path, a temp file beside it): the caller writes the temp file durably,
        then commits it under the key's name; the temp file is gone afterwards either way."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Unique temp name in the same folder: os.replace is then atomic, and two writers of
        # the same key (a resumed job racing a dying one) never share a temp file.
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            yield dest, tmp
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    @contextmanager
    def _durable(tmp: Path) -> Iterator[BinaryIO]:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())   # data on disk before the name that commits it

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        # Written in place beside the key, so committing is a rename: a shard is never written
        # to a temp folder first and copied (which cost a fifth of the ingest's time per record).
        with self._staged(key) as (dest, tmp):
            with self._durable(tmp) as f:
                yield f
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.writer(key) as f:
            f.write(data)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        with self._staged(key) as (dest, tmp):
            with self._durable(tmp) as f:
                f.write(data)
            try:
                os.link(tmp, dest)      # atomic, and refuses an existing name
            except FileExistsError:
                return False
            _fsync_dir(dest.parent)
            return True

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        keys = []
        for p in self.root.rglob("*"):
            if p.is_file() and not p.name.startswith("."):   # skip in-flight temp files
                k = p.relative_to(self.root).as_posix()
                if k.startswith(prefix):
                    keys.append(k)
        return sorted(keys)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def reader_url(self, key: str) -> str:
        return str(self._path(key))


class S3Store(ObjectStore):
    def __init__(self, url: str) -> None:
        import boto3  # imported lazily: local-only users need no AWS stack

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        # Everything else (endpoint, region, credentials) from the standard chain.
        self._client = boto3.session.Session().client("s3")

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        # upload_file switches to multipart for large shards; the object appears only when the
        # upload completes, so a crash never leaves a partial shard under its final key.
        self._client.upload_file(str(path), self.bucket, self._key(key))

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        # A local temp file, uploaded when complete: memory stays bounded whatever the size.
        with tempfile.TemporaryDirectory(prefix="clef-put-") as tmp:
            path = Path(tmp) / "object"
            with open(path, "wb") as f:
                yield f
            self.put_file(key, path)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                    IfNoneMatch="*")
            return True
        except ClientError as e:
            # 412: the key exists; 409: a concurrent conditional write to it is in flight
            if e.response.get("Error", {}).get("Code") in (
                    "PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise

    def get_bytes(self, key: str) -> bytes:
        return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        keys = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root + prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                keys.append(obj["Key"][len(root):])
        return sorted(keys)

    def open(self, key: str) -> BinaryIO:
        return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def reader_url(self, key: str) -> str:
        cmd = [sys.executable, "-m", "clef_platform.storage", "cat", self.full_url(key)]
        return "pipe:" + shlex.join(cmd)

    def arrow_filesystem(self):
        """A pyarrow S3FileSystem for the same endpoint/region (for Ray Data readers).

        The endpoint and region are read back from the boto3 client, which took them from the
        standard chain; credentials stay with pyarrow's own default chain.
        """
        import pyarrow.fs as pafs

        endpoint = self._client.meta.endpoint_url
        parsed = urlparse(endpoint)
        kwargs: dict[str, object] = {"region": self._client.meta.region_name or "us-east-1"}
        if parsed.hostname and not parsed.hostname.endswith("amazonaws.com"):
            kwargs["endpoint_override"] = parsed.netloc
            kwargs["scheme"] = parsed.scheme or "https"
        return pafs.S3FileSystem(**kwargs)

    def arrow_path(self, key: str) -> str:
        return f"{self.bucket}/{self._key(key)}"


def open_store(url: str | Path) -> ObjectStore:
    """`s3://bucket/prefix` -> S3Store; `file:///path` or a plain path -> LocalStore."""
    url = str(url)
    if url.startswith("s3://"):
        return S3Store(url)
    if url.startswith("file://"):
        return LocalStore(urlparse(url).path)
    if "://" in url:
        raise ValueError(f"unsupported storage URL scheme: {url!r}")
    return LocalStore(url)


def _cat(url: str) -> int:
    """Stream one object to stdout (used by webdataset `pipe:` URLs)."""
    parsed = urlparse(url)
    store = open_store(f"{parsed.scheme}://{parsed.netloc}")
    with store.open(parsed.path.lstrip("/")) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, length=1 << 20)
    sys.stdout.buffer.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "cat":
        print("usage: python -m clef_platform.storage cat URL", file=sys.stderr)
        return 2
    return _cat(argv[1])


if __name__ == "__main__":
    raise SystemExit(main())
