"""The single-process reference loop on real LUDB records: corpus, risk, checkpoint, export."""

from pathlib import Path

import numpy as np
import torch

from clef_model import load_encoder
from clef_model.risk import score2_with_missing
from clef_platform.layout import checkpoint as CK
from clef_platform.train.local import LocalPretrainConfig, load_corpus, pretrain

LUDB = Path(__file__).resolve().parents[1] / "data" / "ludb"


def test_corpus_risk_comes_from_header_age_and_sex():
    data = load_corpus(LUDB, "ludb", 5000)
    assert len(data.keys) == 200 and data.signals.shape == (200, 12, 5000)
    i = data.keys.index("ludb/1")            # header: age 51, sex F
    nan = np.nan
    risk, missing = score2_with_missing(51.0, 0.0, nan, nan, nan, nan, nan)
    assert np.isclose(data.risk[i].item(), float(risk), rtol=1e-6)
    assert np.isclose(data.missing[i].item(), 5 / 7) and np.isclose(float(missing), 5 / 7)
    assert data.lead_mask.all()


def test_pretrain_writes_a_loadable_checkpoint_and_export(tmp_path):
    cfg = LocalPretrainConfig(source=LUDB, out_dir=tmp_path, steps=3, batch_size=4, log_every=1)
    summary = pretrain(cfg)
    assert summary["steps"] == 3 and np.isfinite(summary["last_loss"])
    # the distributed job's checkpoint format: verified digest list, plain state
    assert CK.verify(tmp_path / "checkpoint")["step"] == 3
    state = torch.load(tmp_path / "checkpoint" / CK.DDP_STATE, weights_only=True)
    assert state["step"] == 3 and "optimizer" in state and "scheduler" in state
    encoder = load_encoder(tmp_path / "export")
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, state["model"][f"encoder.{name}"]), name
