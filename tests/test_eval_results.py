"""The results format (layout.results): one object per result, created only if absent, so
evaluators racing on one run store every result exactly once, locally and on S3 (moto)."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clef_platform.layout.results import ResultRow, ResultsError, ResultsStore
from clef_platform.storage import open_store
from tests.fixtures import BUNDLED, ingest, subset_folder, write_export


def row(**kw) -> ResultRow:
    base = dict(checkpoint="s3://b/runs/r/exports/step_5", kind="export", run="s3://b/runs/r",
                step=5, task="ludb_sex", config_hash="c" * 16, status="ok", metric="auroc",
                value=0.7, lower=0.6, upper=0.8, n_records=40, n_test=40,
                n_excluded_leakage=3, dataset="s3://b/data/ludb", dataset_digest="d" * 64,
                export_digest="e" * 64, exclusion_digest="x" * 32)
    return ResultRow(**{**base, **kw})


def test_round_trip_and_a_key_per_component(tmp_path):
    store = ResultsStore(str(tmp_path / "results"))
    assert store.read().empty and store.keys() == set()
    r = row()
    skipped = row(task="ludb_age", status="skipped", value=float("nan"),
                  lower=float("nan"), upper=float("nan"))
    assert store.add(r) and store.add(skipped)
    df = store.read()
    assert len(df) == 2 and set(df["key"]) == {r.key().digest, skipped.key().digest}
    got = df[df["task"] == "ludb_sex"].iloc[0]
    assert got["value"] == 0.7 and got["export_digest"] == "e" * 64
    assert got["dataset_digest"] == "d" * 64 and got["step"] == 5
    assert df[df["task"] == "ludb_age"]["value"].isna().all()
    # The object is named by its key's digest.
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == \
        sorted(f"{k}.json" for k in df["key"])
    # Each component of the key names a different result; the URL and time do not.
    key = r.key()
    for field in ("model", "task", "config_hash", "dataset_digest", "exclusion_digest",
                  "protocol"):
        assert dataclasses.replace(key, **{field: "other"}).digest != key.digest, field
    assert row(checkpoint="/elsewhere/exports/step_5").key() == key   # same weights
    assert row(export_digest="f" * 64).key() != key                     # new weights
    assert row(dataset_digest="0" * 64).key() != key                    # new data
    # Baselines keep their ids.
    assert row(kind="random", checkpoint="random:small:seed0", export_digest="").key().model \
        == "random:small:seed0"
    # Adding it again stores nothing and leaves the first untouched.
    assert not store.add(dataclasses.replace(r, value=0.1))
    assert store.read()[lambda d: d["task"] == "ludb_sex"]["value"].tolist() == [0.7]


def test_unreadable_or_misnamed_objects_are_errors_naming_them(tmp_path):
    store = ResultsStore(str(tmp_path))
    store.add(row())
    name = row().key().digest
    (tmp_path / f"{name}.json").rename(tmp_path / f"{'0' * 64}.json")
    with pytest.raises(ResultsError, match=f"{'0' * 64}.json: its name is not the digest"):
        store.read()
    (tmp_path / f"{'0' * 64}.json").write_bytes(b'{"schema_version": 1, "row": ')
    with pytest.raises(ResultsError, match=f"{'0' * 64}.json: not a stored result"):
        store.read()
    (tmp_path / f"{'0' * 64}.json").write_bytes(b'{"schema_version": 7}')
    with pytest.raises(ResultsError, match="results schema version 7"):
        store.read()


def test_s3_concurrent_adds_of_one_key_store_it_once(moto_s3):
    import boto3

    boto3.client("s3").create_bucket(Bucket="results-unit")
    store = ResultsStore("s3://results-unit/runs/r/eval/results")
    rows = [dataclasses.replace(row(), value=0.5 + i / 100) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(store.add, rows))
    assert sum(won) == 1
    df = store.read()
    assert len(df) == 1 and df["value"].iloc[0] == rows[won.index(True)].value
    assert store.keys() == {row().key().digest}


# ------------------------------------------------------------------- racing evaluation passes

@pytest.fixture(scope="module")
def ludb60(ray_local, tmp_path_factory):
    """LUDB records 1-60 (38 M / 22 F, 42 sinus rhythm) ingested as dataset 'ludb'."""
    root = tmp_path_factory.mktemp("eval_race")
    src = subset_folder(BUNDLED["ludb"], root / "src", [str(i) for i in range(1, 61)])
    ingest("ludb", src, str(root / "data" / "ludb"), shard_bytes=1_000_000)
    return root / "data"


def _upload(folder: Path, url: str) -> None:
    store = open_store(url)
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            store.put_file(p.relative_to(folder).as_posix(), p)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_racing_passes_store_every_result_exactly_once(where, ludb60, tmp_path, request):
    from clef_platform.evaluate.passes import EvalConfig, evaluate_pass
    from clef_platform.evaluate.probes import ProbeConfig
    from clef_platform.evaluate.tasks import load_tasks

    if where == "s3":
        import boto3

        request.getfixturevalue("moto_s3")
        boto3.client("s3").create_bucket(Bucket="eval-race")
        _upload(ludb60 / "ludb", "s3://eval-race/data/ludb")
        data_root, run = "s3://eval-race/data", "s3://eval-race/runs/r1"
    else:
        data_root, run = str(ludb60), str(tmp_path / "runs" / "r1")
    write_export(run, 10, "small", seed=1)
    probe = ProbeConfig(logistic_C=(0.1, 1.0), ridge_alpha=(10.0, 100.0), n_bootstrap=200)

    def cfg(names):
        return EvalConfig(run_url=run, tasks=load_tasks(names), data_root=data_root,
                          allow_no_lineage=True, random_baseline=False, probe=probe,
                          retries=0, actors=1)

    # Both passes read what is stored before either writes (the barrier), on task sets that
    # share ludb_rhythm: both score it, and exactly one of them stores it.
    barrier = threading.Barrier(2, timeout=300)
    sets = [["ludb_sex", "ludb_rhythm"], ["ludb_rhythm", "ludb_age"]]
    with ThreadPoolExecutor(2) as pool:
        passes = list(pool.map(lambda names: evaluate_pass(cfg(names), render=False,
                                                           after_read=barrier.wait), sets))
    assert [p.failed for p in passes] == [[], []]
    assert sum(p.added for p in passes) == 3 and sum(p.already for p in passes) == 1
    results = ResultsStore(cfg(sets[0]).results_url)
    df = results.read()
    assert sorted(df["task"]) == ["ludb_age", "ludb_rhythm", "ludb_sex"]
    assert df["key"].is_unique and len(results.keys()) == 3
    assert (df["status"] == "ok").all() and (df["lineage"] == "none").all()

    third = evaluate_pass(cfg(["ludb_sex", "ludb_rhythm", "ludb_age"]), render=False)
    assert third.added == 0 and third.already == 3 and not third.failed
    assert results.read().equals(df)
