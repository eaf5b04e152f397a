"""One typed configuration for distributed pretraining, with per-scale presets.

Precedence, lowest first: dataclass defaults -> the preset of the chosen scale -> a YAML file
(`--config`) -> command-line options. `PretrainConfig.from_args(argv)` applies all four;
`parser()` builds the argparse parser from the dataclasses themselves, so every field has exactly
one CLI option and its `--help` text is the field's `help` metadata.

YAML files mirror the nesting, for example::

    scale: medium
    optim: {lr: 5.0e-4, warmup_steps: 500}
    deepspeed: {zero_stage: 2}
    cluster: {workers: 8, gpus_per_worker: 1}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCALE_NAMES = ("small", "medium", "large")
METHODS = ("clef", "simclr", "byol", "moco")
RECIPE_NAMES = ("scaled", "paper")


def _f(default, help: str, **kw):
    """A dataclass field carrying its CLI help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class OptimConfig:
    lr: float = _f(1e-3, "peak learning rate of AdamW (reached after warmup)")
    weight_decay: float = _f(1e-4, "AdamW decoupled weight decay")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.999, "AdamW beta2")
    eps: float = _f(1e-8, "AdamW epsilon")
    warmup_steps: int = _f(20, "linear warmup from 0 to lr over this many optimiser steps")
    min_lr_ratio: float = _f(0.1, "cosine decay ends at lr * min_lr_ratio at the last step")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this value (0 disables)")
    grad_accum: int = _f(1, "gradient accumulation micro-steps per optimiser step")
    schedule: str = _f("warmup-cosine", "'warmup-cosine': per step, linear warmup then cosine to "
                                        "lr x min_lr_ratio; 'cosine-restarts': torch's "
                                        "CosineAnnealingWarmRestarts stepped once per epoch "
                                        "(the release's, train/schedule.py)",
                       choices=["warmup-cosine", "cosine-restarts"])
    restart_epochs: int = _f(10, "cosine-restarts: epochs of the first cycle (T_0)")
    restart_mult: int = _f(2, "cosine-restarts: each cycle is this many times longer (T_mult)")
    eta_min: float = _f(1e-6, "cosine-restarts: the lowest learning rate (eta_min)")
    decay_all: bool = _f(False, "weight decay on every parameter (the release) instead of only "
                                "on weights with more than one dimension")
    lr_scaling: str = _f("sqrt", "how lr follows the global batch when --lr is not given: "
                                 "'sqrt' = lr x sqrt(global batch / reference_batch), 'linear', "
                                 "or 'none' (train/recipes.py)",
                         choices=["sqrt", "linear", "none"])
    reference_batch: int = _f(128, "global batch (x grad_accum) at which the recipe's lr is "
                                   "defined; set by the recipe per scale")


@dataclass
class DeepSpeedConfig:
    enabled: bool = _f(True, "train through DeepSpeed; false = plain DDP via "
                             "ray.train.torch.prepare_model (CLI: --no-deepspeed)")
    zero_stage: int = _f(1, "DeepSpeed ZeRO stage 0-3 (partition optimiser states, grads, params)",
                         choices=[0, 1, 2, 3])
    precision: str = _f("auto", "auto = bf16 on GPU, fp32 on CPU; or force bf16 / fp32",
                        choices=["auto", "bf16", "fp32"])
    activation_checkpointing: bool = _f(False, "recompute each encoder block in backward "
                                               "(trades ~1/3 more compute for memory)")


@dataclass
class DataConfig:
    data: str = _f("", "ingested dataset URL (local folder, file:// or s3://) holding "
                       "manifest.parquet and the WebDataset shards; repeat --data (YAML: a "
                       "list) to mix several datasets, weighted by --data-weights", multi=True)
    weights: str = _f("", "sampling weights of the --data datasets, in their order, "
                          "comma-separated (e.g. 3,1; YAML: a list); each finite and > 0. "
                          "Empty = 1 each. Every sample is drawn from dataset i with "
                          "probability weight_i / sum(weights)", multi=True)
    split: str = _f("train", "manifest split to train on")
    features: str = _f("", "Feast feature repository folder for risk and missing fraction; "
                           "empty = no metadata (risk 0, all missing) - only sensible for simclr/byol/moco")
    loader_workers: int = _f(1, "DataLoader worker processes per training worker")
    shuffle_buffer: int = _f(256, "records in each reader's shuffle buffer")
    views_on: str = _f("device", "where CLEF views are made: 'device' (batched, in the training "
                                 "step, on the GPU when there is one) or 'loader' (in DataLoader "
                                 "worker processes)", choices=["device", "loader"])
    view_length: int = _f(5000, "samples per view (500 Hz; CLEF uses 5000 = 10 s)")
    view_profile: str = _f("platform", "'platform': the batched FFT band-pass; 'paper': the "
                                       "release's scipy filtfilt band-pass (default padding, "
                                       "CPU) (docs/reproducing.md)",
                           choices=["platform", "paper"])
    noise_dir: str = _f("", "local folder of real noise records mixed into the views, named "
                            "as in the MIT-BIH Noise Stress Test Database: ma, em, bw, each a "
                            "WFDB record (.hea) or .npz (signal [channels, samples], fs); "
                            "resampled to the view rate (docs/training.md). Empty: the "
                            "synthetic noise models")
    verify: str = _f("shards", "what reads check: 'shards' (each shard's size, SHA-256 and record "
                               "count against the dataset's index, ~one hash pass over the data), "
                               "'records' (also each record's signal SHA-256), 'none'",
                     choices=["none", "shards", "records"])
    on_damage: str = _f("fail", "a shard or record that fails its check: 'fail' stops the run "
                                "naming it; 'skip' leaves it out, logs and counts it",
                        choices=["fail", "skip"])
    order: str = _f("stream", "'stream': each rank streams its own resampled shards (training); "
                              "'global': every rank reads one deterministic record order and takes "
                              "its slice of each global batch (debugging / equivalence checks); "
                              "'epoch' (what --epochs uses): exact passes, each shuffled by "
                              "(seed, epoch), every rank taking its slice of each global batch",
                    choices=["stream", "global", "epoch"])


@dataclass
class ClusterConfig:
    workers: int = _f(2, "Ray Train workers (data-parallel ranks)")
    gpus_per_worker: float = _f(0.0, "GPUs per worker (0 = CPU training over gloo)")
    cpus_per_worker: float = _f(1.0, "logical CPUs reserved per worker; keep below the node's "
                                     "cores so loader tasks can still be scheduled")
    address: str = _f("", "Ray cluster to join ('auto' = the one `ray start` left on this "
                          "host); empty = $RAY_ADDRESS, else a private local instance on "
                          "127.0.0.1; 'local' = always a private one (never joins silently)")
    max_failures: int = _f(3, "worker-group restarts after a lost worker; a bad value, damaged "
                                 "data or unwritable storage fails at once (train/failures.py)")
    # Multi-host (docs/cluster.md): where the workers go, and which interface gloo/NCCL use.
    placement: str = _f("PACK", "worker placement: PACK (fill a host first), SPREAD (across "
                                "hosts when possible), STRICT_SPREAD (one worker per host)",
                        choices=["PACK", "SPREAD", "STRICT_SPREAD"])
    socket_ifname: str = _f("", "network interface for gloo/NCCL (GLOO_SOCKET_IFNAME, "
                                "NCCL_SOCKET_IFNAME); empty = the interface that carries each "
                                "host's Ray address")


PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD")   # Ray placement-group strategies


@dataclass
class CheckpointConfig:
    storage: str = _f("out/runs", "where runs live (local folder or s3://bucket/prefix); "
                                  "checkpoints and exports go under <storage>/<run-name>")
    run_name: str = _f("clef-pretrain", "run name: the folder under --storage; rerun with the "
                                        "same name and --resume to continue")
    every: int = _f(50, "checkpoint (and export the encoder) every N optimiser steps, and at the end")
    keep: int = _f(3, "DeepSpeed checkpoints Ray keeps (exports are all kept)")
    resume: bool = _f(False, "continue the run from its latest checkpoint: step count, "
                             "optimiser and schedule")


@dataclass
class MetricsConfig:
    port: int = _f(0, "Prometheus port on 127.0.0.1 for rank 0 (rank k uses port + k), for "
                      "runs scraped without Ray's metrics agent; 0 = the metrics go through "
                      "Ray's metrics pipeline (docs/monitoring.md)")
    backend: str = _f("auto", "where the metrics go: auto (prometheus when a port is given, else "
                              "ray), ray, prometheus, off", choices=["auto", "ray", "prometheus",
                                                                     "off"])
    peak_flops: float = _f(0.0, "measured peak training FLOP/s of one worker, the denominator of "
                                "model FLOP utilisation (0 = MFU not reported)")
    log_every: int = _f(10, "rank 0 logs a progress line every N steps")
    nonfinite_hold_s: float = _f(15.0, "seconds a worker keeps a non-finite loss on its metrics "
                                       "before the run fails, so that Ray's metrics report and a "
                                       "Prometheus scrape carry it to the loss-not-finite alert "
                                       "(0 = fail at once)")


@dataclass
class PretrainConfig:
    scale: str = _f("small", "encoder scale; selects the preset", choices=list(SCALE_NAMES))
    method: str = _f("clef", "objective: clef (risk-weighted), simclr (NT-Xent), byol, moco",
                     choices=list(METHODS))
    recipe: str = _f("scaled", "named recipe layered over the scale's preset and under "
                               "--config / options: 'scaled' (the platform's presets, lr scaled "
                               "with the global batch) or 'paper' (the authors' release exactly; "
                               "docs/reproducing.md)", choices=["scaled", "paper"])
    steps: int = _f(200, "optimiser steps to train (the total, counting resumed ones); give "
                         "this or --epochs")
    epochs: int = _f(0, "passes over the training split (each shuffled, every record once); "
                        "0 = train --steps; give this or --steps")
    patience: int = _f(0, "early stopping: stop when the epoch's mean training loss has not "
                          "improved by patience_delta for this many epochs (0 = off)")
    patience_delta: float = _f(1e-4, "early stopping: the least improvement that counts")
    batch_per_worker: int = _f(64, "records per worker per micro-step; global batch = "
                                   "batch_per_worker x workers")
    seed: int = _f(0, "seed for initialisation and views (views depend on seed, record, epoch)")
    temperature: float = _f(0.07, "contrastive temperature")
    baseline_variant: str = _f("platform", "byol / moco architecture: 'platform' (projector "
                                           "heads, symmetrised MoCo, queue 4096, momentum 0.99) "
                                           "or 'paper' (the release: no projector, one-direction "
                                           "MoCo, queue 65536, momentum 0.999 / BYOL 0.996, "
                                           "BatchNorm predictor d->d/2->d)",
                               choices=["platform", "paper"])
    moco_queue: int = _f(4096, "MoCo negatives queue length (paper variant: 65536 unless given)")
    momentum: float = _f(0.99, "BYOL / MoCo target encoder EMA momentum (paper variant: 0.999 "
                               "for moco, 0.996 for byol unless given)")
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    # ---- derived -------------------------------------------------------------------------
    @property
    def datasets(self) -> list[tuple[str, float]]:
        """[(URL, sampling weight)] of the training data, in --data order (weights unchecked:
        `validate` checks them)."""
        urls = split_multi(self.data.data)
        weights = [float(w) for w in split_multi(self.data.weights)] or [1.0] * len(urls)
        return list(zip(urls, weights))

    @property
    def global_batch(self) -> int:
        return self.batch_per_worker * self.cluster.workers

    @property
    def use_gpu(self) -> bool:
        return self.cluster.gpus_per_worker > 0

    @property
    def bf16(self) -> bool:
        if self.deepspeed.precision == "auto":
            return self.use_gpu
        return self.deepspeed.precision == "bf16"

    def validate(self) -> "PretrainConfig":
        errors = []
        if self.scale not in SCALE_NAMES:
            errors.append(f"scale must be one of {SCALE_NAMES}")
        if self.method not in METHODS:
            errors.append(f"method must be one of {METHODS}")
        if self.epochs < 0:
            errors.append(f"epochs must be >= 0, got {self.epochs}")
        if self.epochs and self.optim.grad_accum != 1:
            errors.append("--epochs needs optim.grad_accum 1 (an epoch is counted in global "
                          "batches of one optimiser step)")
        if self.epochs and self.data.order != "epoch":
            errors.append(f"--epochs needs data.order 'epoch', got {self.data.order!r}")
        if self.recipe not in RECIPE_NAMES:
            errors.append(f"recipe must be one of {RECIPE_NAMES}")
        for name, value in (("steps", self.steps), ("batch_per_worker", self.batch_per_worker),
                            ("cluster.workers", self.cluster.workers),
                            ("checkpoint.every", self.checkpoint.every),
                            ("optim.grad_accum", self.optim.grad_accum)):
            if value < 1:
                errors.append(f"{name} must be >= 1, got {value}")
        if self.cluster.placement not in PLACEMENTS:
            errors.append(f"cluster.placement must be one of {PLACEMENTS}, "
                          f"got {self.cluster.placement!r}")
        if self.deepspeed.zero_stage not in (0, 1, 2, 3):
            errors.append("deepspeed.zero_stage must be 0-3")
        if self.method in ("byol", "moco") and self.deepspeed.enabled and self.deepspeed.zero_stage == 3:
            errors.append("byol/moco keep an EMA copy of the encoder, which needs whole "
                          "parameters: use ZeRO stage 0-2")
        if self.method == "clef" and not self.data.features:
            errors.append("method clef needs --features (risk and missing fraction)")
        if not self.data.data:
            errors.append("--data (an ingested dataset URL) is required")
        errors += _dataset_errors(self)
        if self.bf16 and not self.deepspeed.enabled and not self.use_gpu:
            errors.append("bf16 without DeepSpeed is only supported on GPU")
        if self.data.noise_dir:
            from clef_platform.layout.noise import NoiseFileError, read_noise_dir

            try:        # read once here, so a bad file is one line before Ray starts
                read_noise_dir(self.data.noise_dir)
            except NoiseFileError as e:
                errors.append(f"--data.noise_dir: {e}")
        errors += self._range_errors()
        if errors:
            raise ValueError("invalid pretraining config: " + "; ".join(errors))
        return self

    def _range_errors(self) -> list[str]:
        """Values that cannot work, found before anything starts (not in the workers after
        three restarts)."""
        from clef_model.net1d import SCALES, min_input_length

        o, d, c = self.optim, self.data, self.cluster
        checks = [  # (name, value, ok, what it must be)
            ("optim.lr", o.lr, o.lr > 0, "> 0"),
            ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0"),
            ("optim.beta1", o.beta1, 0 <= o.beta1 < 1, "in [0, 1)"),
            ("optim.beta2", o.beta2, 0 <= o.beta2 < 1, "in [0, 1)"),
            ("optim.eps", o.eps, o.eps > 0, "> 0"),
            ("optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, ">= 0"),
            ("optim.min_lr_ratio", o.min_lr_ratio, 0 <= o.min_lr_ratio <= 1, "in [0, 1]"),
            ("optim.grad_clip", o.grad_clip, o.grad_clip >= 0, ">= 0"),
            ("optim.restart_epochs", o.restart_epochs, o.restart_epochs >= 1, ">= 1"),
            ("optim.restart_mult", o.restart_mult, o.restart_mult >= 1, ">= 1"),
            ("optim.eta_min", o.eta_min, o.eta_min >= 0, ">= 0"),
            ("optim.reference_batch", o.reference_batch, o.reference_batch >= 1, ">= 1"),
            ("temperature", self.temperature, self.temperature > 0, "> 0"),
            ("patience", self.patience, self.patience >= 0, ">= 0"),
            ("patience_delta", self.patience_delta, self.patience_delta >= 0, ">= 0"),
            ("moco_queue", self.moco_queue, self.moco_queue >= 1, ">= 1"),
            ("momentum", self.momentum, 0 <= self.momentum <= 1, "in [0, 1]"),
            ("data.loader_workers", d.loader_workers, d.loader_workers >= 0, ">= 0"),
            ("data.shuffle_buffer", d.shuffle_buffer, d.shuffle_buffer >= 1, ">= 1"),
            ("cluster.gpus_per_worker", c.gpus_per_worker, c.gpus_per_worker >= 0, ">= 0"),
            ("cluster.cpus_per_worker", c.cpus_per_worker, c.cpus_per_worker > 0, "> 0"),
            ("cluster.max_failures", c.max_failures, c.max_failures >= 0, ">= 0"),
            ("checkpoint.keep", self.checkpoint.keep, self.checkpoint.keep >= 1, ">= 1"),
            ("metrics.port", self.metrics.port, 0 <= self.metrics.port <= 65535,
             "a TCP port (0-65535)"),
            ("metrics.log_every", self.metrics.log_every, self.metrics.log_every >= 1, ">= 1"),
            ("metrics.nonfinite_hold_s", self.metrics.nonfinite_hold_s,
             self.metrics.nonfinite_hold_s >= 0, ">= 0"),
        ]
        errors = [f"{name} must be {what}, got {value!r}" for name, value, ok, what in checks
                  if not ok or (isinstance(value, float) and not math.isfinite(value))]
        if self.scale in SCALES:
            shortest = min_input_length(SCALES[self.scale])
            if d.view_length < shortest:
                errors.append(f"data.view_length must be >= {shortest} (the {self.scale} "
                              f"encoder's total stride), got {d.view_length}")
        return errors

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        cfg = cls()
        apply_overrides(cfg, d)
        return cfg

    @classmethod
    def preset(cls, scale: str) -> "PretrainConfig":
        if scale not in PRESETS:
            raise ValueError(f"unknown scale {scale!r}; expected one of {SCALE_NAMES}")
        cfg = cls()
        apply_overrides(cfg, PRESETS[scale])
        return cfg

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "PretrainConfig":
        """Preset of the scale -> recipe -> YAML (--config) -> CLI options -> the recipe's
        derived values (train/recipes.py: global batch split, lr scaling, epochs or steps)."""
        from clef_platform.train import recipes

        from clef_platform.cli import UsageError

        p = parser()
        ns = p.parse_args(argv)
        given = dict(vars(ns))
        config_path = given.pop("config", None)
        yaml_d: dict[str, Any] = load_yaml(config_path) if config_path else {}
        try:
            scale = given.get("scale") or yaml_d.get("scale") or "small"
            recipe = given.get("recipe") or yaml_d.get("recipe") or "scaled"
            cfg = cls.preset(scale)
            recipes.apply_recipe(cfg, recipe)
            apply_overrides(cfg, yaml_d)
        except ValueError as e:
            raise UsageError(f"{config_path}: {e}" if config_path else str(e)) from None
        try:
            apply_overrides(cfg, _unflatten(given))
            recipes.resolve(cfg, recipes.explicit_keys(yaml_d) | recipes.explicit_keys(
                _unflatten(given)))
            return cfg.validate()
        except ValueError as e:
            raise UsageError(str(e)) from None


# Per-scale presets (overrides of the defaults above). Batches are per worker.
# small: CPU-friendly; medium/large: one 80 GB GPU per worker, bf16.
# Measured footprints and throughput are in docs/training.md.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "batch_per_worker": 64,
        "optim": {"lr": 1e-3, "warmup_steps": 20, "grad_clip": 1.0, "grad_accum": 1},
        "deepspeed": {"zero_stage": 1, "activation_checkpointing": False},
    },
    "medium": {
        "batch_per_worker": 256,
        "optim": {"lr": 5e-4, "warmup_steps": 500, "grad_clip": 1.0, "grad_accum": 1},
        "deepspeed": {"zero_stage": 2, "activation_checkpointing": False},
        "data": {"loader_workers": 4, "shuffle_buffer": 2048},
        "cluster": {"gpus_per_worker": 1, "cpus_per_worker": 8},
    },
    "large": {
        "batch_per_worker": 256,
        "optim": {"lr": 3e-4, "warmup_steps": 1000, "grad_clip": 1.0, "grad_accum": 2},
        "deepspeed": {"zero_stage": 2, "activation_checkpointing": True},
        "data": {"loader_workers": 6, "shuffle_buffer": 4096},
        "cluster": {"gpus_per_worker": 1, "cpus_per_worker": 10},
    },
}


# ---- helpers ------------------------------------------------------------------------------

# Fields that hold a list (several --data, their weights) in one string, joined by MULTI_SEP, so
# the config stays flat scalars (to_dict, the config digest and YAML round-trip unchanged for a
# single dataset).
MULTI_SEP = ","


def split_multi(value: str) -> list[str]:
    return [v.strip() for v in str(value).split(MULTI_SEP) if v.strip()]


def _dataset_errors(cfg) -> list[str]:
    """One-line problems with --data / --data-weights (checked before Ray starts)."""
    import math

    urls, raw = split_multi(cfg.data.data), split_multi(cfg.data.weights)
    errors = []
    if raw and len(raw) != len(urls):
        errors.append(f"--data-weights gives {len(raw)} weight(s) for {len(urls)} --data "
                      f"dataset(s); give one per dataset, in order")
    for w in raw:
        try:
            ok = math.isfinite(float(w)) and float(w) > 0
        except ValueError:
            ok = False
        if not ok:
            errors.append(f"--data-weights: {w!r} is not a finite number > 0")
    if len(set(urls)) != len(urls):
        errors.append("--data names a dataset more than once (give it one weight instead)")
    if len(urls) > 1 and cfg.data.order == "global":
        errors.append("data.order 'global' reads one dataset; several --data need 'stream' or "
                      "'epoch'")
    return errors

def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping; a missing or unreadable file or bad YAML is a UsageError naming it."""
    import yaml

    from clef_platform.cli import UsageError

    try:
        with open(path) as f:
            d = yaml.safe_load(f) or {}
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise UsageError(f"--config {path}: not valid YAML{at}") from None
    if not isinstance(d, dict):
        raise UsageError(f"--config {path}: expected a mapping at the top level")
    return d


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(tp, value, key: str):
    """`value` as a `tp`, strictly: YAML `steps: 3.7`, `batch_per_worker: true` or
    `steps: "three"` are errors naming the key, never truncated or cast. An int is a float; a
    float field also takes a string that reads as one, because YAML 1.1 (PyYAML) reads `1e-3`
    without a decimal point as a string."""
    if value is None:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key {key!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"config key {key!r} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"config key {key!r} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"config key {key!r} must be a string, got {value!r}")
    return value


def apply_overrides(obj, d: dict[str, Any], prefix: str = "") -> None:
    """Set fields of a (nested) dataclass from a (nested or dotted) dict; unknown keys raise."""
    hints = _hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    names = set(fields)
    multi = {n for n, f in fields.items() if f.metadata.get("multi")}
    for key, value in d.items():
        if "." in key:
            head, rest = key.split(".", 1)
            apply_overrides(obj, {head: {rest: value}}, prefix)
            continue
        key_n = key.replace("-", "_")
        if key_n not in names:
            raise ValueError(f"unknown config key {prefix + key!r}")
        current = getattr(obj, key_n)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key {prefix + key!r} must be a mapping")
            apply_overrides(current, value, prefix + key_n + ".")
        elif key_n in multi and isinstance(value, (list, tuple)):   # YAML list / repeated option
            setattr(obj, key_n, MULTI_SEP.join(str(v) for v in value))
        else:
            value = _coerce(hints[key_n], value, prefix + key_n)
            choices = fields[key_n].metadata.get("choices")
            if choices is not None and value not in choices:
                raise ValueError(f"config key {prefix + key_n!r} must be one of {choices}, "
                                 f"got {value!r}")
            setattr(obj, key_n, value)


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        parts = k.split("__")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out


# Short CLI spellings for the options the job is usually run with.
_ALIASES = {
    "data.data": ["--data"],
    "data.weights": ["--data-weights"],
    "data.features": ["--features"],
    "checkpoint.storage": ["--storage"],
    "checkpoint.run_name": ["--run-name"],
    "checkpoint.resume": ["--resume"],
    "checkpoint.every": ["--checkpoint-every"],
    "cluster.workers": ["--workers"],
    "cluster.gpus_per_worker": ["--gpus-per-worker"],
    "cluster.cpus_per_worker": ["--cpus-per-worker"],
    "cluster.address": ["--address"],
    "cluster.max_failures": ["--max-failures"],
    "cluster.placement": ["--placement"],
    "metrics.port": ["--metrics-port"],
    "deepspeed.zero_stage": ["--zero-stage"],
    "deepspeed.precision": ["--precision"],
    "optim.lr": ["--lr"],
}


def parser() -> argparse.ArgumentParser:
    from clef_platform.cli import ArgumentParser

    p = ArgumentParser(
        prog="pretrain.py",
        description="Distributed CLEF pretraining on Ray Train + DeepSpeed. Values come from the "
                    "scale's preset, then --config YAML, then these options. Nested fields are "
                    "spelled --section.field (e.g. --optim.lr) or by their short alias.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of overrides (same nesting as the config)")
    p.add_argument("--no-deepspeed", dest="deepspeed__enabled", action="store_false",
                   help="plain DDP through ray.train.torch.prepare_model instead of DeepSpeed")

    def add(cls, prefix: str, group):
        hints = _hints(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            dotted = prefix + f.name
            if dataclasses.is_dataclass(tp):
                add(tp, dotted + ".", p.add_argument_group(f.name, tp.__doc__ and None))
                continue
            names = [f"--{dotted}"] if prefix else [f"--{f.name.replace('_', '-')}"]
            if prefix and f"--{dotted.replace('_', '-')}" not in names:
                names.append(f"--{dotted.replace('_', '-')}")
            names += [a for a in _ALIASES.get(dotted, []) if a not in names]
            dest = dotted.replace(".", "__")
            help_ = f.metadata.get("help", "")
            default = getattr(defaults, f.name)
            help_ += f" (default: {default!r}; presets may change it)"
            if tp is bool:
                group.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction,
                                   help=help_)
            elif f.metadata.get("multi"):   # repeatable; apply_overrides joins the list
                group.add_argument(*names, dest=dest, action="append", help=help_,
                                   metavar=tp.__name__.upper())
            else:
                group.add_argument(*names, dest=dest, type=tp, help=help_,
                                   choices=f.metadata.get("choices"),
                                   metavar=None if f.metadata.get("choices") else tp.__name__.upper())

    add(PretrainConfig, "", p)
    from clef_platform.train import recipes

    p.epilog = ("presets (per worker):\n" + json.dumps(PRESETS, indent=1)
                + "\n\nrecipes (layered over the preset, under --config and options):\n"
                + recipes.describe_recipes())
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    return p
