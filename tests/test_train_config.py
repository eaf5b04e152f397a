"""Pretraining config: presets, YAML and CLI precedence, --help, driver-side checks (no Ray)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from clef_platform.cli import UsageError
from clef_platform.train.config import PRESETS, PretrainConfig, parser
from clef_platform.train.engine import EngineConfig, deepspeed_config
from clef_platform.train.schedule import warmup_cosine as lr_lambda

REPO = Path(__file__).resolve().parents[1]
BASE = ["--data", "d", "--features", "f"]


def test_presets_per_scale():
    small, medium, large = (PretrainConfig.preset(s) for s in ("small", "medium", "large"))
    assert large.deepspeed.activation_checkpointing and not small.deepspeed.activation_checkpointing
    assert large.use_gpu and large.bf16 and not small.bf16   # bf16 on GPU, fp32 on CPU
    assert small.deepspeed.zero_stage in (1, 2) and large.deepspeed.zero_stage >= 2
    assert large.optim.lr < medium.optim.lr < small.optim.lr
    for scale in PRESETS:
        assert PretrainConfig.from_args(["--scale", scale, *BASE]).scale == scale


def test_yaml_then_cli_override(tmp_path):
    y = tmp_path / "o.yaml"
    y.write_text("scale: medium\noptim: {lr: 0.0002, warmup_steps: 7}\ncluster: {workers: 5}\n"
                 "deepspeed: {zero_stage: 3}\n")
    cfg = PretrainConfig.from_args(["--config", str(y), *BASE, "--workers", "3",
                                    "--optim.grad_accum", "2", "--no-deepspeed", "--resume"])
    assert cfg.scale == "medium" and cfg.batch_per_worker == PRESETS["medium"]["batch_per_worker"]
    assert cfg.optim.lr == 0.0002 and cfg.optim.warmup_steps == 7      # from YAML
    assert cfg.cluster.workers == 3 and cfg.optim.grad_accum == 2       # CLI wins
    assert cfg.deepspeed.zero_stage == 3 and not cfg.deepspeed.enabled
    assert cfg.checkpoint.resume
    assert cfg.global_batch == 3 * cfg.batch_per_worker
    # round trip through the dict the workers receive
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_yaml_key_and_invalid_values(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("optim: {learning_rate: 1}\n")
    with pytest.raises(ValueError, match="optim.learning_rate"):
        PretrainConfig.from_args(["--config", str(y), *BASE])
    # User errors are UsageError (clef_platform.cli: exit 2, one line naming the option).
    with pytest.raises(UsageError, match="needs --features"):
        PretrainConfig.from_args(["--method", "clef", "--data", "d"])   # clef needs --features
    with pytest.raises(UsageError, match="steps must be >= 1"):
        PretrainConfig.from_args([*BASE, "--steps", "0"])


def test_help_explains_every_option():
    text = parser().format_help()
    for flag in ["--scale", "--method", "--data", "--features", "--storage", "--run-name",
                 "--workers", "--gpus-per-worker", "--batch-per-worker", "--steps", "--seed",
                 "--resume", "--no-deepspeed", "--config", "--metrics-port"]:
        assert flag in text, flag

    def fields(cls, prefix=""):
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or isinstance(f.default_factory, type):
                yield from fields(f.default_factory, prefix + f.name + ".")
            else:
                assert f.metadata.get("help"), f"{prefix}{f.name} has no help text"
                yield prefix + f.name

    names = list(fields(PretrainConfig))
    assert len(names) > 30
    for name in names:
        flag = "--" + name if "." in name else "--" + name.replace("_", "-")
        assert flag in text, flag
    out = subprocess.run([sys.executable, "jobs/pretrain.py", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--optim.warmup_steps" in out.stdout


def test_schedule_warmup_then_cosine():
    total, warm = 100, 10
    lrs = [lr_lambda(s, warm, total, 0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))       # monotone decay
    assert lr_lambda(total, warm, total, 0.1) == pytest.approx(0.1)


def test_deepspeed_config_uses_torch_optimizer_and_precision():
    cfg = PretrainConfig.from_args([*BASE, "--zero-stage", "2", "--optim.grad_accum", "3"])
    ds = deepspeed_config(EngineConfig.from_pretrain(cfg))
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_accumulation_steps"] == 3
    assert ds["bf16"]["enabled"] is False and "optimizer" not in ds   # torch AdamW passed in
    assert ds["gradient_clipping"] == cfg.optim.grad_clip


def _manifest(tmp_path, n_shards):
    """A real dataset of `n_shards` shards of two LUDB records (written by the ingest's shard
    task and committed by the layout, without Ray)."""
    from tests.test_loader import build_dataset

    build_dataset(tmp_path, 2 * n_shards, 2)


def test_fewer_shards_than_readers_is_a_clear_error(tmp_path):
    from clef_platform.train import data as D

    _manifest(tmp_path, 2)
    cfg = PretrainConfig.from_args(["--data", str(tmp_path), "--method", "simclr",
                                    "--workers", "2", "--data.loader_workers", "2"])
    df = D.read_split_manifest(cfg.data.data, "train")
    with pytest.raises(D.NotEnoughShardsForReaders, match="2 shard.*4 readers"):
        D.check_readers(cfg, df["shard"].nunique())
    cfg.data.loader_workers = 1
    D.check_readers(cfg, df["shard"].nunique())


def test_existing_run_needs_resume(tmp_path):
    from clef_platform.train.run import run_pretraining

    _manifest(tmp_path, 2)
    run = tmp_path / "runs" / "r" / "exports" / "step_5"
    run.mkdir(parents=True)
    (run / "_COMPLETE").write_text("{}")
    cfg = PretrainConfig.from_args(["--data", str(tmp_path), "--method", "simclr",
                                    "--storage", str(tmp_path / "runs"), "--run-name", "r"])
    with pytest.raises(FileExistsError, match="--resume"):
        run_pretraining(cfg)


def test_several_datasets_with_weights_from_cli_and_yaml(tmp_path, capsys):
    """One --data is weight 1 as before; repeated --data take --data-weights in order (or a YAML
    list); a weight that is not finite and > 0, or a count that does not match, is one line
    naming the option, before anything starts."""
    one = PretrainConfig.from_args(BASE)
    assert one.data.data == "d" and one.datasets == [("d", 1.0)]
    two = PretrainConfig.from_args(["--data", "a", "--data", "s3://b/c", "--features", "f",
                                    "--data-weights", "3,1"])
    assert two.datasets == [("a", 3.0), ("s3://b/c", 1.0)]
    assert PretrainConfig.from_dict(two.to_dict()).datasets == two.datasets   # to the workers
    y = tmp_path / "mix.yaml"
    y.write_text("data: {data: [a, b], weights: [2, 0.5], features: f}\n")
    assert PretrainConfig.from_args(["--config", str(y)]).datasets == [("a", 2.0), ("b", 0.5)]
    for bad, says in ((["3", "nan"], "'nan' is not a finite number > 0"),
                      (["3", "0"], "'0' is not a finite number > 0"),
                      (["3", "-1"], "'-1' is not a finite number > 0"),
                      (["3", "inf"], "'inf' is not a finite number > 0"),
                      (["3"], "gives 1 weight(s) for 2 --data dataset(s)")):
        with pytest.raises(UsageError) as e:       # the job prints it as one line, exit 2
            PretrainConfig.from_args(["--data", "a", "--data", "b", "--features", "f",
                                      "--data-weights", ",".join(bad)])
        (line,) = str(e.value).splitlines()
        assert says in line and "--data-weights" in line
    with pytest.raises(UsageError) as e:
        PretrainConfig.from_args(["--data", "a", "--data", "b", "--features", "f",
                                  "--data.order", "global"])
    assert "data.order 'global' reads one dataset" in str(e.value)
