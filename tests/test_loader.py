"""The loader over real shards (LUDB records written by the pipeline's own shard task, without
Ray): shard splitting over ranks and DataLoader workers, resampled training reads, the clear
error for an exact pass with too few shards, shuffling, safe decoding, the record contract."""

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from clef_platform.layout import dataset as mf
from clef_platform.ingest.adapters import get_adapter
from clef_platform.ingest.pipeline import plan_shards, ref_to_json, write_shard
from clef_platform.layout.shards import decode_sample
from clef_platform.ingest.splits import SplitRatios
from clef_platform.loader import (
    LoaderConfig, NotEnoughShards, record_dataset, record_loader, shard_urls,
)
from clef_platform.storage import open_store

REPO = Path(__file__).resolve().parents[1]
LUDB = REPO / "data" / "ludb"
TRAIN_ONLY = SplitRatios((("train", 1.0),))


def build_dataset(dest: Path, n_records: int, per_shard: int) -> list[str]:
    """Write shards + manifest exactly as the pipeline does, one shard task at a time."""
    refs = list(get_adapter("ludb").list_records(LUDB))[:n_records]
    plans, dup = plan_shards(refs, TRAIN_ONLY, per_shard)
    assert not dup
    store = open_store(dest)
    rows, qrows, infos = [], [], []
    for p in plans:
        write_shard(p.name, p.split, json.dumps([ref_to_json(r) for r in p.refs]), str(dest))
        info, s, q = mf.read_part(store, p.name)
        rows += s
        qrows += q
        infos.append(info)
    mf.commit_dataset(store, mf.manifest_table(rows), mf.quarantine_table(qrows), infos)
    return sorted(r["key"] for r in rows)


@pytest.fixture(scope="module")
def eight_shards(tmp_path_factory):
    dest = tmp_path_factory.mktemp("loader") / "eight"
    return str(dest), build_dataset(dest, 40, 5)


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory):
    dest = tmp_path_factory.mktemp("loader") / "one"
    return str(dest), build_dataset(dest, 6, 10)


def keys_of(loader) -> list[str]:
    return [r["key"] for r in loader]


def test_exact_pass_splits_shards_over_ranks_and_workers(eight_shards):
    url, keys = eight_shards
    assert len(shard_urls(url, "train")) == 8
    seen: list[str] = []
    per_rank = []
    for rank in range(2):
        cfg = LoaderConfig(url, "train", mode="exact", rank=rank, world_size=2)
        got = keys_of(record_loader(cfg, num_workers=2))
        per_rank.append(set(got))
        seen += got
    assert sorted(seen) == keys                       # every record exactly once
    assert not per_rank[0] & per_rank[1] and all(len(s) == 20 for s in per_rank)


def test_exact_pass_with_too_few_shards_is_a_clear_error(one_shard):
    url, _ = one_shard
    with pytest.raises(NotEnoughShards, match="1 shards for 2 readers"):
        record_loader(LoaderConfig(url, "train", mode="exact", rank=0, world_size=1),
                      num_workers=2)
    with pytest.raises(NotEnoughShards):
        record_dataset(LoaderConfig(url, "train", mode="exact", rank=1, world_size=2))
    # Built by hand around the check, the workers themselves raise (no hang, no silent skip).
    ds = record_dataset(LoaderConfig(url, "train", mode="exact", rank=0, world_size=1))
    dl = torch.utils.data.DataLoader(ds, num_workers=2, batch_size=None,
                                     collate_fn=lambda x: x)
    with pytest.raises(NotEnoughShards):
        list(dl)


def test_training_resamples_shards_for_more_readers_than_shards(one_shard):
    url, keys = one_shard
    got = []
    for rank in range(2):
        cfg = LoaderConfig(url, "train", rank=rank, world_size=2, samples_per_reader=9)
        got.append(keys_of(record_loader(cfg, num_workers=2)))
    assert [len(g) for g in got] == [18, 18]          # 4 readers x 9, from a single shard
    assert set(got[0]) | set(got[1]) <= set(keys)
    same = keys_of(record_loader(LoaderConfig(url, "train", rank=0, world_size=2,
                                              samples_per_reader=9), num_workers=2))
    assert same == got[0]                              # seeded by (seed, epoch, rank, worker)
    other = keys_of(record_loader(LoaderConfig(url, "train", rank=0, world_size=2, seed=1,
                                               samples_per_reader=9), num_workers=2))
    assert other != got[0]


def test_shuffle_buffer_permutes_within_an_exact_pass(eight_shards):
    url, keys = eight_shards
    plain = keys_of(record_dataset(LoaderConfig(url, "train", mode="exact",
                                                rank=0, world_size=1)))
    shuffled = keys_of(record_dataset(LoaderConfig(url, "train", mode="exact", rank=0,
                                                   world_size=1, shuffle_buffer=50)))
    assert plain == keys and sorted(shuffled) == keys and shuffled != plain


def test_record_contract_and_batches(eight_shards):
    url, _ = eight_shards
    rec = next(iter(record_dataset(LoaderConfig(url, "train", rank=0, world_size=1))))
    for k in ("key", "record_id", "patient_id", "corpus", "ecg_time", "split"):
        assert isinstance(rec[k], str)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", rec["key"]) and rec["patient_id"].startswith("ludb/")
    assert rec["signal"].dtype == np.float32 and rec["signal"].shape == (12, 5000)
    assert rec["lead_mask"].dtype == bool and rec["lead_mask"].shape == (12,)
    assert {"age", "sex", "labels", "quality_flags", "fs_original", "sha256"} <= set(rec["meta"])
    batch = next(iter(record_loader(LoaderConfig(url, "train", rank=0, world_size=1),
                                    num_workers=1, batch_size=4)))
    assert batch["signal"].shape == (4, 12, 5000) and batch["lead_mask"].dtype == torch.bool
    assert len(batch["key"]) == 4


def test_decoding_refuses_pickled_arrays():
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    meta = json.dumps({"key": "k", "n_samples": 1}).encode()
    with pytest.raises(ValueError):
        decode_sample({"signal.npy": buf.getvalue(), "meta.json": meta})


def test_shard_members_are_only_npy_and_json(eight_shards):
    url, _ = eight_shards
    for path in shard_urls(url, "train"):
        with tarfile.open(path) as tar:
            assert {m.name.split(".", 1)[1] for m in tar.getmembers()} == {"signal.npy",
                                                                           "meta.json"}


# ---- verified reads: every kind of damage is refused or skipped by policy, never silent ----

from clef_platform.layout.dataset import open_dataset  # noqa: E402
from clef_platform.layout.errors import DatasetError, RecordError, ShardError  # noqa: E402
from clef_platform.layout.shards import read_shard  # noqa: E402
from tests.damage import KINDS  # noqa: E402


def _damaged_copy(src: str, dest: Path, kind: str) -> tuple[str, str]:
    import shutil

    shutil.copytree(src, dest)
    victim = sorted((dest / "shards").glob("*.tar"))[3]
    KINDS[kind](victim)
    return str(dest), victim.stem


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_damaged_shard_fails_naming_it(eight_shards, tmp_path, kind):
    url, keys = eight_shards
    bad, name = _damaged_copy(url, tmp_path / "ds", kind)
    cfg = LoaderConfig(bad, "train", mode="exact", rank=0, world_size=1)
    with pytest.raises(ShardError, match=f"shard {name}:"):
        keys_of(record_dataset(cfg))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_damaged_shard_is_skipped_whole_and_reported(eight_shards, tmp_path, kind):
    url, keys = eight_shards
    bad, name = _damaged_copy(url, tmp_path / "ds", kind)
    skipped: list[DatasetError] = []
    cfg = LoaderConfig(bad, "train", mode="exact", rank=0, world_size=1, on_damage="skip")
    got = keys_of(record_dataset(cfg, on_skip=skipped.append))
    lost = set(open_dataset(bad).frame().query("shard == @name")["key"])
    assert len(lost) == 5 and sorted(got) == sorted(set(keys) - lost)   # none of it, all else
    assert [e.shard for e in skipped] == [name]


def test_unverified_read_of_a_cut_shard_is_silently_short(eight_shards, tmp_path):
    """Why the check is on by default: without it a shard cut at a member boundary (or with a
    flipped header) simply ends early, and nobody hears of it."""
    url, keys = eight_shards
    bad, _ = _damaged_copy(url, tmp_path / "ds", "cut_at_member_boundary")
    got = keys_of(record_dataset(LoaderConfig(bad, "train", mode="exact", rank=0,
                                              world_size=1, verify="none")))
    assert len(got) < len(keys)


def test_record_check_names_the_record_and_skip_keeps_the_rest(eight_shards, tmp_path):
    url, _ = eight_shards
    bad, name = _damaged_copy(url, tmp_path / "ds", "overwrite_signal")
    ds = open_dataset(bad)
    info = ds.shards[name]
    first = ds.frame().query("shard == @name")["key"].iloc[0]
    with pytest.raises(RecordError, match=f"shard {name}, record {first}: signal SHA-256"):
        list(read_shard(ds.store, info, verify_shard=False, verify_records=True))
    bad_records: list[RecordError] = []
    kept = [r["key"] for r in read_shard(ds.store, info, verify_shard=False,
                                         verify_records=True, on_bad_record=bad_records.append)]
    assert [e.key for e in bad_records] == [first] and len(kept) == info.records - 1


def test_dataset_digest_names_the_content(eight_shards, one_shard, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    url, _ = eight_shards
    a, b = open_dataset(url), open_dataset(one_shard[0])
    assert len(a.digest) == 64 and a.digest != b.digest
    shutil.copytree(url, tmp_path / "copy")
    assert open_dataset(str(tmp_path / "copy")).digest == a.digest
    # a manifest edited after the commit no longer matches its recorded digest
    m = pq.read_table(tmp_path / "copy" / "manifest.parquet")
    sha = m.column("sha256").to_pylist()
    sha[0] = "0" * 64
    pq.write_table(m.set_column(m.schema.get_field_index("sha256"), "sha256",
                                pa.array(sha)).replace_schema_metadata(m.schema.metadata),
                   tmp_path / "copy" / "manifest.parquet")
    with pytest.raises(DatasetError, match="does not match its recorded dataset digest"):
        open_dataset(str(tmp_path / "copy"))
    # a dataset of the first layout (no schema version, no shard index) is refused by name
    pq.write_table(m.replace_schema_metadata(None), tmp_path / "copy" / "manifest.parquet")
    with pytest.raises(DatasetError, match="schema version 1.*re-ingest"):
        open_dataset(str(tmp_path / "copy"))
