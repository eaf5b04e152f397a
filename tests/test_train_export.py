"""Encoder exports: complete-or-absent on a local folder and on S3 (moto on 127.0.0.1)."""

from __future__ import annotations

import torch

from clef_model import build_encoder, load_encoder
from clef_platform.train.export import MARKER, export_encoder, list_exports


def test_local_export_is_atomic_and_listed(tmp_path):
    enc = build_encoder("small")
    url = export_encoder(enc, str(tmp_path), "run", 5)
    assert list_exports(str(tmp_path), "run") == {5: url}
    assert sorted(p.name for p in (tmp_path / "run/exports/step_5").iterdir()) == \
        [MARKER, "config.json", "encoder.safetensors"]
    # no temporary folders left beside it
    assert [p.name for p in (tmp_path / "run/exports").iterdir()] == ["step_5"]
    # a half-written export (no marker) is invisible to readers
    (tmp_path / "run/exports/step_9").mkdir()
    (tmp_path / "run/exports/step_9/config.json").write_text("{}")
    assert list(list_exports(str(tmp_path), "run")) == [5]
    x = torch.randn(1, 1, 5000)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(url)(x), enc.eval()(x))
    # re-exporting the same step (a replayed step after a restart) replaces it whole
    export_encoder(build_encoder("small"), str(tmp_path), "run", 5)
    assert list(list_exports(str(tmp_path), "run")) == [5]


def test_s3_export_marker_written_last(moto_s3, tmp_path):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="exports")
    enc = build_encoder("small")
    url = export_encoder(enc, "s3://exports/runs", "r1", 3)
    assert url == "s3://exports/runs/r1/exports/step_3"
    assert list_exports("s3://exports/runs", "r1") == {3: url}
    objs = {o["Key"] for o in s3.list_objects_v2(Bucket="exports")["Contents"]}
    assert objs == {f"runs/r1/exports/step_3/{n}" for n in (MARKER, "config.json", "encoder.safetensors")}
    # files without their marker (an upload cut short) are not an export
    s3.put_object(Bucket="exports", Key="runs/r1/exports/step_6/config.json", Body=b"{}")
    assert list(list_exports("s3://exports/runs", "r1")) == [3]
    local = tmp_path / "dl"
    local.mkdir()
    for n in ("config.json", "encoder.safetensors"):
        s3.download_file("exports", f"runs/r1/exports/step_3/{n}", str(local / n))
    x = torch.randn(1, 1, 5000)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(local)(x), enc.eval()(x))
