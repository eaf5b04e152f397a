"""docs/reproducing.md names every constant of the paper recipe and baselines, each in its table
row with the release's file:line, and the value in the row is the value the code uses."""

from __future__ import annotations

import re
from pathlib import Path

from clef_platform.train import recipes

DOC = Path(__file__).resolve().parents[1] / "docs" / "reproducing.md"
CITE = re.compile(r"`[\w/]+\.(?:py|yaml):\d+(?:-\d+)?`")

P = recipes.RECIPES["paper"]
# (row label, the number as the row writes it, the value the platform's paper recipe uses)
CONSTANTS = [
    ("epochs", "100", P["epochs"]),
    ("batch size", "64", recipes.PAPER_GLOBAL_BATCH),
    ("learning rate", "1e-4", P["optim"]["lr"]),
    ("weight decay", "5e-4", P["optim"]["weight_decay"]),
    ("T_0", "10", P["optim"]["restart_epochs"]),
    ("T_mult", "2", P["optim"]["restart_mult"]),
    ("eta_min", "1e-6", P["optim"]["eta_min"]),
    ("warmup", "0", P["optim"]["warmup_steps"]),
    ("gradient clipping", "0", P["optim"]["grad_clip"]),
    ("patience", "20", P["patience"]),
    ("patience delta", "0.0001", P["patience_delta"]),
    ("temperature", "0.07", P["temperature"]),
    ("MoCo queue", "65536", recipes.PAPER_MOCO_QUEUE),
    ("MoCo momentum", "0.999", recipes.PAPER_MOMENTUM["moco"]),
    ("BYOL target momentum", "0.996", recipes.PAPER_MOMENTUM["byol"]),
]


def rows() -> dict[str, str]:
    out = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            out[line.split("|")[1].strip()] = line
    return out


def test_every_paper_constant_is_in_the_table_with_file_and_line():
    table = rows()
    for label, text, value in CONSTANTS:
        assert label in table, f"no row {label!r} in docs/reproducing.md"
        row = table[label]
        assert float(text) == float(value), (label, text, value)
        release = row.split("|")[2]
        assert CITE.search(release), f"row {label!r} cites no release file:line"
        if float(text) != 0:   # "none" rows (warmup, clipping) say so in words
            assert re.search(rf"(?<![\d.]){re.escape(text)}(?![\d])", release), (label, release)
    for label in ("schedule", "precision", "early stopping", "MoCo direction", "MoCo enqueue",
                  "BYOL predictor", "last partial batch", "shuffle per epoch", "AdamW betas"):
        assert CITE.search(table[label].split("|")[2]), label
    # the recipe's schedule and precision are the ones the rows name
    assert P["optim"]["schedule"] == "cosine-restarts" and "CosineAnnealingWarmRestarts" in table[
        "schedule"]
    assert P["deepspeed"]["precision"] == "fp32" and "fp32" in table["precision"]


def test_every_fine_tune_constant_is_the_protocol_default():
    """The downstream rows' numbers are FineTuneConfig's defaults, each row citing the release."""
    from clef_platform.evaluate.finetune import FineTuneConfig

    d = FineTuneConfig()
    table = rows()
    for label, text, value in [("fine-tune learning rate", "1e-3", d.lr),
                               ("fine-tune weight decay", "1e-5", d.weight_decay),
                               ("fine-tune epochs", "100", d.max_epochs),
                               ("fine-tune batch size", "64", d.batch_size),
                               ("fine-tune patience", "5", d.patience),
                               ("fine-tune patience delta", "0.001", d.min_delta)]:
        release = table[label].split("|")[2]
        assert float(text) == float(value), (label, value)
        assert CITE.search(release) and text in release, (label, release)
    assert d.peak_lr == 10 * d.lr == 1e-2 and "lr x 10" in table["fine-tune schedule"]
    for label in ("fine-tune protocol", "fine-tune head", "fine-tune loss", "fine-tune optimiser",
                  "fine-tune early stopping", "fine-tune precision", "fine-tune lead", "noise"):
        assert CITE.search(table[label].split("|")[2]), label
    assert "--data.noise_dir" in table["noise"]
