"""Training's encoder exports go through layout.export: committed once, with lineage, on a local
folder and on S3 (moto on 127.0.0.1); a replayed step leaves the committed export unchanged."""

from __future__ import annotations

import torch

from clef_model import build_encoder
from clef_platform.digests import sha256_file
from clef_platform.layout.export import (MARKER, TrainingData, list_exports, load_export,
                                         read_marker, run_url)
from clef_platform.train.export import dataset_url, export_encoder

LINEAGE = dict(method="clef", scale="small", recipe="platform", config_digest="c0ffee",
               training_data=(TrainingData(url="/data/ludb", split="train",
                                           dataset_digest="d" * 64, records=160),))


def _embed(enc):
    x = torch.randn(1, 1, 5000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return enc.eval()(x)


def test_local_export_is_committed_once_with_lineage(tmp_path):
    torch.manual_seed(0)
    enc = build_encoder("small")
    url, created = export_encoder(enc, str(tmp_path), "run", 5, loss=1.25, **LINEAGE)
    assert created and list_exports(run_url(str(tmp_path), "run")) == {5: url}
    m = read_marker(url)
    assert (m.step, m.run_name, m.method, m.recipe, m.loss) == (5, "run", "clef", "platform", 1.25)
    assert m.training_data == LINEAGE["training_data"]
    assert sorted(m.files) == ["config.json", "encoder.safetensors"]
    torch.testing.assert_close(_embed(load_export(url)), _embed(enc))
    files = sorted(p for p in (tmp_path / "run/exports/step_5").rglob("*") if p.is_file())
    before = {p: sha256_file(p) for p in files}
    # a half-written export (no marker) is invisible to readers
    (tmp_path / "run/exports/step_9/a-x").mkdir(parents=True)
    (tmp_path / "run/exports/step_9/a-x/config.json").write_text("{}")
    assert list(list_exports(run_url(str(tmp_path), "run"))) == [5]

    # a replayed step (worker restart, --resume) finds the committed export and leaves it alone
    url2, created2 = export_encoder(build_encoder("small"), str(tmp_path), "run", 5, loss=9.0,
                                    **LINEAGE)
    assert url2 == url and not created2
    after = sorted(p for p in (tmp_path / "run/exports/step_5").rglob("*") if p.is_file())
    assert after == files and {p: sha256_file(p) for p in after} == before
    assert read_marker(url).loss == 1.25


def test_s3_export(moto_s3, tmp_path):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="exports")
    enc = build_encoder("small")
    url, created = export_encoder(enc, "s3://exports/runs", "r1", 3, **LINEAGE)
    assert created and url == "s3://exports/runs/r1/exports/step_3"
    assert list_exports("s3://exports/runs/r1") == {3: url}
    m = read_marker(url)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="exports")["Contents"]}
    assert keys == {f"runs/r1/exports/step_3/{MARKER}"} | {
        f"runs/r1/exports/step_3/{m.attempt}/{n}" for n in ("config.json", "encoder.safetensors")}
    torch.testing.assert_close(_embed(load_export(url)), _embed(enc))
    assert not export_encoder(build_encoder("small"), "s3://exports/runs", "r1", 3, **LINEAGE)[1]
    assert read_marker(url).attempt == m.attempt


def test_dataset_url_is_absolute_for_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dataset_url("out/ludb") == str(tmp_path / "out/ludb")
    assert dataset_url(f"file://{tmp_path}/x") == str(tmp_path / "x")
    assert dataset_url("s3://b/p") == "s3://b/p"
