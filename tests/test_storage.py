"""ObjectStore on a local folder and on S3 (a real moto server on 127.0.0.1)."""

import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from clef_platform.storage import LocalStore, S3Store, open_store


def _roundtrip(store, tmp_path: Path) -> None:
    assert store.list() == []
    assert not store.exists("a/b.bin")
    store.put_bytes("a/b.bin", b"hello")
    store.put_bytes("a/c.bin", b"x" * 10)
    store.put_bytes("z.bin", b"z")
    assert store.exists("a/b.bin")
    assert store.get_bytes("a/b.bin") == b"hello"
    assert store.list() == ["a/b.bin", "a/c.bin", "z.bin"]
    assert store.list("a/") == ["a/b.bin", "a/c.bin"]
    store.put_bytes("a/b.bin", b"replaced")           # overwrite is a whole-object swap
    assert store.get_bytes("a/b.bin") == b"replaced"
    src = tmp_path / "blob"
    src.write_bytes(bytes(range(256)) * 1000)
    store.put_file("big/blob.tar", src)
    with store.open("big/blob.tar") as f:
        assert f.read() == src.read_bytes()
    with store.writer("streamed/shard.tar") as f:      # written in pieces, committed whole
        for i in range(3):
            f.write(bytes([i]) * 1000)
    assert store.get_bytes("streamed/shard.tar") == b"".join(bytes([i]) * 1000 for i in range(3))
    with pytest.raises(RuntimeError, match="worker died"):
        with store.writer("streamed/half.tar") as f:
            f.write(b"first half")
            raise RuntimeError("worker died")
    assert store.list("streamed/") == ["streamed/shard.tar"]  # a failed write leaves no object
    store.delete("a/c.bin")
    store.delete("a/c.bin")                             # missing: not an error
    assert store.list("a/") == ["a/b.bin"]
    for bad in ("../escape", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ValueError):
            store.put_bytes(bad, b"")
    # conditional create: of writers racing for one key exactly one wins, the object is its
    assert store.put_bytes_if_absent("once/marker", b"first") is True
    assert store.put_bytes_if_absent("once/marker", b"second") is False
    assert store.get_bytes("once/marker") == b"first"
    import threading
    wins: list[bool] = []
    barrier = threading.Barrier(4)

    def racer(i: int) -> None:
        barrier.wait()
        wins.append(store.put_bytes_if_absent("race/key", f"writer {i}".encode()))

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]
    assert store.get_bytes("race/key").startswith(b"writer ")


def test_local_store(tmp_path):
    store = open_store(tmp_path / "root")
    assert isinstance(store, LocalStore)
    _roundtrip(store, tmp_path)
    # atomic puts leave no temp files behind
    assert not [p for p in (tmp_path / "root").rglob(".*")]
    assert open_store(f"file://{tmp_path}/root").list() == store.list()
    assert store.reader_url("z.bin") == str(tmp_path / "root" / "z.bin")


def test_store_urls_validated():
    with pytest.raises(ValueError):
        open_store("gs://bucket/x")
    with pytest.raises(ValueError):
        S3Store("s3:///nobucket")


def test_s3_store(moto_s3, tmp_path):
    bucket = f"clef-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    store = open_store(f"s3://{bucket}/some/prefix")
    assert isinstance(store, S3Store)
    _roundtrip(store, tmp_path)
    # keys really live under the prefix
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]
    assert all(o["Key"].startswith("some/prefix/") for o in listed)
    # the pipe: reader URL streams the object through `python -m clef_platform.storage cat`
    url = store.reader_url("big/blob.tar")
    assert url.startswith("pipe:")
    out = subprocess.run(url[len("pipe:"):], shell=True, capture_output=True, check=True)
    assert out.stdout == (tmp_path / "blob").read_bytes()
    assert sys.executable in url
