"""Ingest to S3 (a real moto server on 127.0.0.1 over HTTP): write, resume, read back with
webdataset (pipe: URLs) and with Ray Data (read_webdataset over pyarrow's S3 filesystem)."""

import hashlib
import uuid
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest

from clef_platform.layout.dataset import MANIFEST_KEY, PARTS_PREFIX, QUARANTINE_KEY
from clef_platform.ingest.pipeline import IngestConfig, run_ingest
from clef_platform.loader import LoaderConfig, ray_dataset, record_dataset
from clef_platform.storage import open_store

REPO = Path(__file__).resolve().parents[1]
CINC = REPO / "data" / "cinc2021-sample"
SHARD_BYTES = 600_000            # ~4 records per shard: 50 records -> a dozen shards

pytestmark = pytest.mark.slow


def _digests(store) -> dict[str, str]:
    return {k: hashlib.sha256(store.get_bytes(k)).hexdigest() for k in store.list("shards/")}


@pytest.fixture(scope="module")
def s3_and_local(ray_local, moto_s3, tmp_path_factory):
    bucket = f"clef-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/datasets/cinc"
    s3 = run_ingest(IngestConfig("cinc2021", CINC, url, shard_bytes=SHARD_BYTES, workers=2))
    local_dir = tmp_path_factory.mktemp("cinc-local") / "ds"
    run_ingest(IngestConfig("cinc2021", CINC, str(local_dir), shard_bytes=SHARD_BYTES))
    return url, s3, local_dir


def test_s3_write_equals_local(s3_and_local):
    url, summary, local_dir = s3_and_local
    store, local = open_store(url), open_store(local_dir)
    assert summary.balanced and summary.stored == 50 and summary.shards > 2
    assert _digests(store) == _digests(local)            # same bytes on S3 and on disk
    assert store.exists(MANIFEST_KEY) and store.exists(QUARANTINE_KEY)
    import io
    m = pq.read_table(io.BytesIO(store.get_bytes(MANIFEST_KEY)))
    assert m.equals(pq.read_table(local_dir / MANIFEST_KEY))


def test_s3_resume(s3_and_local, ray_local):
    url, clean, _ = s3_and_local
    store = open_store(url)
    before = _digests(store)
    lost = sorted(k for k in store.list("shards/"))[1:3]
    for key in lost:
        name = key[len("shards/"):-len(".tar")]
        store.delete(key)
        store.delete(f"{PARTS_PREFIX}{name}.json")
    store.delete(MANIFEST_KEY)
    resumed = run_ingest(IngestConfig("cinc2021", CINC, url, shard_bytes=SHARD_BYTES))
    assert resumed.shards_written == 2 and resumed.shards_skipped == clean.shards - 2
    assert _digests(store) == before
    assert store.exists(MANIFEST_KEY)


def test_read_back_with_the_loader_and_ray_data(s3_and_local, ray_local):
    url, _, local_dir = s3_and_local
    local_recs = {}
    for split in ("train", "val", "test"):
        for r in record_dataset(LoaderConfig(str(local_dir), split, mode="exact",
                                             rank=0, world_size=1)):
            local_recs[r["key"]] = r
    # the loader streams S3 shards through the store (boto3), verified against the index
    got = {}
    for split in ("train", "val", "test"):
        for r in record_dataset(LoaderConfig(url, split, mode="exact", rank=0, world_size=1)):
            got[r["key"]] = r
    assert got.keys() == local_recs.keys() and len(got) == 50
    for k, r in got.items():
        assert np.array_equal(r["signal"], local_recs[k]["signal"])
        assert np.array_equal(r["lead_mask"], local_recs[k]["lead_mask"])
    # Ray Data: one block per shard, through the same verified shard reader
    rows = ray_dataset(url, "train").take_all()
    train_keys = {k for k, r in local_recs.items() if r["split"] == "train"}
    assert {r["key"] for r in rows} == train_keys
    for r in rows:
        assert np.allclose(np.asarray(r["signal"]), local_recs[r["key"]]["signal"])
        assert r["patient_id"].startswith("cinc2021/")


def test_two_ingests_racing_for_one_s3_destination(ray_local, moto_s3):
    """Both read the (absent) claim before either writes it: the conditional PUT lets one in."""
    from tests.test_ingest_pipeline import race_two_ingests

    bucket = f"clef-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    race_two_ingests(f"s3://{bucket}/raced", "cinc2021", CINC, SHARD_BYTES)


def test_ingest_of_a_corpus_in_s3_equals_the_local_one(s3_and_local):
    # A corpus synced to a bucket as plain files (no index), as `aws s3 sync` leaves it: the
    # driver and each shard task read their host's mirror of it; the dataset is the same.
    url, _, local_dir = s3_and_local
    bucket = url.split("/")[2]
    s3 = boto3.client("s3")
    for path in sorted(p for p in CINC.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, "corpora/cinc/" + path.relative_to(CINC).as_posix())
    dest = f"s3://{bucket}/datasets/cinc-from-s3"
    summary = run_ingest(IngestConfig("cinc2021", f"s3://{bucket}/corpora/cinc", dest,
                                      shard_bytes=SHARD_BYTES, workers=2))
    assert summary.balanced and summary.stored == 50
    store = open_store(dest)
    local = open_store(local_dir)
    import io
    got = pq.read_table(io.BytesIO(store.get_bytes(MANIFEST_KEY))).to_pandas()
    want = pq.read_table(local_dir / MANIFEST_KEY).to_pandas()
    assert got["key"].tolist() == want["key"].tolist()
    assert got.drop(columns=[c for c in got.columns if "path" in c]).equals(
        want.drop(columns=[c for c in want.columns if "path" in c]))
