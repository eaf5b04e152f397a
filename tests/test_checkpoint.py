"""Released-checkpoint loading (strict, no pickle) and the safetensors export round trip."""

import argparse
import json
import logging
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import clef_model
from clef_model import checkpoint as ck
from clef_model.checkpoint import (CheckpointMismatchError, load_encoder,
                                   load_released_checkpoint, save_encoder)
from clef_model.net1d import SCALES, build_encoder

REF = Path(__file__).resolve().parent / "reference"
MISSING_KEY = "backbone.stage_list.3.block_list.1.conv2.conv.weight"
SHAPE_KEY = "backbone.stage_list.5.block_list.0.se_fc1.weight"


@pytest.fixture(scope="module")
def forward_check():
    with np.load(REF / "clef-small-forward-check.npz", allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def lightning_dict(forward_check) -> dict:
    """What a released CLEF .ckpt holds: backbone + projection head + trainer bookkeeping."""
    state = OrderedDict(
        (k, torch.from_numpy(v)) for k, v in forward_check.items() if k.startswith("backbone."))
    state["projector.0.weight"] = torch.randn(128, 256)
    state["projector.0.bias"] = torch.zeros(128)
    return {"state_dict": state, "epoch": 3, "global_step": 1200,
            "pytorch-lightning_version": "2.1.0", "hyper_parameters": {"lr": 1e-3}}


def write_ckpt(path: Path, ckpt: dict) -> Path:
    torch.save(ckpt, path)
    return path


def embed(model, forward_check) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(forward_check["__input__"]))


def test_released_checkpoint_reproduces_reference(tmp_path, forward_check, caplog):
    path = write_ckpt(tmp_path / "clef-small.ckpt", lightning_dict(forward_check))
    with caplog.at_level(logging.INFO, logger="clef_model.checkpoint"):
        model = clef_model.load_released_checkpoint(path, "small")
    assert not model.training
    np.testing.assert_allclose(embed(model, forward_check).numpy(), forward_check["__output__"],
                               atol=1e-4, rtol=0)
    text = caplog.text
    assert "skipped 124 unused BatchNorm tensors" in text  # 31 BN modules x 4 tensors
    assert "backbone.stage_list.0.block_list.0.bn1.running_var" in text
    assert "ignored 2 non-encoder tensors: projector.0.weight, projector.0.bias" in text


def test_load_report_lists_what_was_skipped(forward_check):
    state = lightning_dict(forward_check)["state_dict"]
    model = build_encoder("small")
    report = ck.load_backbone_state(model, state)
    assert report.ignored_non_backbone == ["projector.0.weight", "projector.0.bias"]
    assert len(report.skipped_unused) == 124
    assert all(".bn" in k or "first_bn" in k for k in report.skipped_unused)
    assert len(report.loaded) == 226 - 124  # every forward tensor of the npz
    # BatchNorm really was skipped: still at its init, not the checkpoint's values.
    assert torch.equal(model.first_bn.weight, torch.ones(32))


def test_legacy_non_zip_checkpoint_loads(tmp_path, forward_check):
    path = tmp_path / "legacy.ckpt"
    torch.save(lightning_dict(forward_check), path, _use_new_zipfile_serialization=False)
    model = load_released_checkpoint(path, "small")
    np.testing.assert_allclose(embed(model, forward_check).numpy(), forward_check["__output__"],
                               atol=1e-4, rtol=0)


def test_missing_forward_key_is_named(tmp_path, forward_check):
    ckpt = lightning_dict(forward_check)
    del ckpt["state_dict"][MISSING_KEY]
    path = write_ckpt(tmp_path / "missing.ckpt", ckpt)
    with pytest.raises(CheckpointMismatchError, match=MISSING_KEY.replace(".", r"\.")):
        load_released_checkpoint(path, "small")


def test_missing_batchnorm_key_is_fine(tmp_path, forward_check):
    ckpt = lightning_dict(forward_check)
    for k in [k for k in ckpt["state_dict"] if ".bn" in k or "first_bn" in k]:
        del ckpt["state_dict"][k]
    model = load_released_checkpoint(write_ckpt(tmp_path / "nobn.ckpt", ckpt), "small")
    np.testing.assert_allclose(embed(model, forward_check).numpy(), forward_check["__output__"],
                               atol=1e-4, rtol=0)


def test_wrong_shape_is_named(tmp_path, forward_check):
    ckpt = lightning_dict(forward_check)
    ckpt["state_dict"][SHAPE_KEY] = ckpt["state_dict"][SHAPE_KEY].t().contiguous()
    path = write_ckpt(tmp_path / "shape.ckpt", ckpt)
    with pytest.raises(CheckpointMismatchError,
                       match=SHAPE_KEY.replace(".", r"\.") + r" has shape \[256, 128\]"):
        load_released_checkpoint(path, "small")


def test_wrong_scale_is_rejected(tmp_path, forward_check):
    path = write_ckpt(tmp_path / "small.ckpt", lightning_dict(forward_check))
    with pytest.raises(CheckpointMismatchError,
                       match=r"lacks 100 tensor.*wrong scale.*stage_list\.0\.block_list\.1.*and 90 more"):
        load_released_checkpoint(path, "medium")


def test_extra_backbone_key_is_rejected(tmp_path, forward_check):
    ckpt = lightning_dict(forward_check)
    ckpt["state_dict"]["backbone.stage_list.6.block_list.0.conv1.conv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"stage_list\.6\.block_list\.0"):
        load_released_checkpoint(write_ckpt(tmp_path / "extra.ckpt", ckpt), "small")


def test_arbitrary_pickle_is_refused(tmp_path, forward_check):
    ckpt = lightning_dict(forward_check)
    # Old Lightning stored hparams as an argparse.Namespace: unpickling it means running
    # arbitrary constructors, which weights_only refuses.
    ckpt["hyper_parameters"] = argparse.Namespace(lr=1e-3)
    path = write_ckpt(tmp_path / "pickle.ckpt", ckpt)
    with pytest.raises(ValueError, match="weights-only"):
        load_released_checkpoint(path, "small")


def test_not_a_lightning_file(tmp_path):
    path = write_ckpt(tmp_path / "plain.ckpt", {"weights": torch.zeros(3)})
    with pytest.raises(ValueError, match="no 'state_dict'"):
        load_released_checkpoint(path, "small")


def test_export_round_trip(tmp_path, forward_check):
    path = write_ckpt(tmp_path / "clef-small.ckpt", lightning_dict(forward_check))
    model = load_released_checkpoint(path, "small")
    with torch.no_grad():
        model.first_bn.weight.fill_(2.0)  # state beyond the forward tensors survives too
    out = tmp_path / "exports" / "enc"
    assert clef_model.save_encoder(model, out) == out

    assert sorted(p.name for p in out.iterdir()) == ["config.json", "encoder.safetensors"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["enc"]  # no temp dirs left
    meta = json.loads((out / "config.json").read_text())
    assert meta["scale"] == "small"
    assert meta["config"] == json.loads(json.dumps(asdict(SCALES["small"])))

    loaded = clef_model.load_encoder(out)
    assert not loaded.training and loaded.scale == "small"
    assert loaded.config == model.config
    torch.testing.assert_close(embed(loaded, forward_check), embed(model, forward_check),
                               rtol=0, atol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_export_keeps_non_default_config(tmp_path):
    torch.manual_seed(0)
    model = build_encoder("small", in_channels=12)
    model.activation_checkpointing = True  # flipped at runtime: the export records it
    save_encoder(model, tmp_path / "e")
    loaded = load_encoder(tmp_path / "e")
    assert loaded.config.in_channels == 12 and loaded.config.activation_checkpointing
    assert loaded.activation_checkpointing
    x = torch.randn(2, 12, 600)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_export_refuses_to_clobber_unless_asked(tmp_path):
    torch.manual_seed(0)
    a, b = build_encoder("small"), build_encoder("small")
    out = tmp_path / "enc"
    save_encoder(a, out)
    with pytest.raises(FileExistsError):
        save_encoder(b, out)
    assert torch.equal(load_encoder(out).first_conv.conv.weight, a.first_conv.conv.weight)
    save_encoder(b, out, overwrite=True)
    assert torch.equal(load_encoder(out).first_conv.conv.weight, b.first_conv.conv.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_encoder(build_encoder("small"), tmp_path / "enc")
    assert list(tmp_path.iterdir()) == []


def test_save_unwraps_wrapper_and_rejects_other_modules(tmp_path):
    class Wrapper(torch.nn.Module):  # what DDP / DeepSpeed look like: `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

    save_encoder(Wrapper(build_encoder("small")), tmp_path / "w")
    assert load_encoder(tmp_path / "w").scale == "small"
    with pytest.raises(TypeError):
        save_encoder(torch.nn.Linear(2, 2), tmp_path / "x")


def test_load_encoder_rejects_inconsistent_config(tmp_path):
    out = tmp_path / "enc"
    save_encoder(build_encoder("small"), out)
    meta = json.loads((out / "config.json").read_text())
    meta["scale"] = "medium"
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match scale 'medium'"):
        load_encoder(out)
