"""The fine-tune protocol: the encoder and a linear head trained together on a task's training
split, as the release's downstream script does (docs/reproducing.md, "Downstream").

The driver side (`run_finetune`) splits the labelled records as the probes do (a `folds` task:
its train / val / test; a `kfold` task: each outer patient-level fold is the test part and the
first inner fold of its training part the validation part), puts the evaluation views and the
targets in Ray's object store once and runs one Ray Train job (`TorchTrainer`, DDP through
`ray.train.torch.prepare_model`) whose workers fine-tune every fold in turn:

- the encoder is built from the `ModelSpec` (an export: `layout.export.load_export`, every file
  verified against its marker; the same loading path as the probes) plus `Linear(D, outputs)`;
- AdamW (lr, weight decay) with OneCycleLR to `max_lr`, stepped per optimiser step;
- after every epoch the validation loss (summed over every rank's part, all-reduced) decides
  early stopping: `patience` epochs without an improvement of more than `min_delta` stop the
  fold; the weights of the lowest validation loss score the test part (the release tests its
  best checkpoint);
- bf16 autocast on GPU (the release trains "16-mixed"), fp32 on CPU.

Losses: BCE-with-logits for binary and multi-label tasks (the release's criterion), MSE on the
training part's standardised target for regression. The pooled test predictions give the
metric and its patient-level bootstrap interval exactly as for the probes.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from clef_platform.digests import stable_hash
from clef_platform.evaluate.embed import ModelSpec
from clef_platform.evaluate.probes import (ProbeConfig, _group_folds, _metric, auroc,
                                           bootstrap_ci)
from clef_platform.evaluate.tasks import Labels, TaskSpec, _norm, get_field

log = logging.getLogger(__name__)

FINE_TUNE = "fine-tune"
OUT_FILE = "finetune.json"    # inside the job's last checkpoint, read back by the driver


class FineTuneError(ValueError):
    """A fine-tune option out of range (names the option)."""


@dataclass(frozen=True)
class FineTuneConfig:
    """The release's downstream settings by default (configs/exp/ptbxl_downstream.yaml)."""

    lr: float = 1e-3                    # AdamW learning rate
    max_lr: float | None = None         # OneCycleLR peak; None: 10 x lr (the release's rule)
    weight_decay: float = 1e-5
    max_epochs: int = 100
    patience: int = 5                   # epochs without a val-loss improvement before stopping
    min_delta: float = 1e-3             # an improvement is a drop of more than this
    batch_size: int = 64                # global batch, split over the workers
    folds: int | None = None            # kfold tasks: outer folds fine-tuned (None: every fold)
    seed: int = 0
    # Resources: where it runs, not what it computes (not part of the results key).
    workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool | None = None         # None: when the Ray cluster has GPUs

    @property
    def peak_lr(self) -> float:
        return self.max_lr if self.max_lr is not None else 10 * self.lr

    def validate(self) -> None:
        checks = [("lr", self.lr > 0, self.lr), ("max_lr", self.max_lr is None or
                                                  self.max_lr >= self.lr, self.max_lr),
                  ("weight_decay", self.weight_decay >= 0, self.weight_decay),
                  ("epochs", self.max_epochs >= 1, self.max_epochs),
                  ("patience", self.patience >= 1, self.patience),
                  ("min_delta", self.min_delta >= 0, self.min_delta),
                  ("batch_size", self.batch_size >= 2 * self.workers, self.batch_size),
                  ("folds", self.folds is None or self.folds >= 1, self.folds),
                  ("workers", self.workers >= 1, self.workers),
                  ("cpus_per_worker", self.cpus_per_worker > 0, self.cpus_per_worker)]
        need = {"lr": "> 0", "max_lr": ">= --finetune.lr", "weight_decay": ">= 0",
                "epochs": ">= 1", "patience": ">= 1", "min_delta": ">= 0",
                "batch_size": f">= 2 per worker ({2 * self.workers} for {self.workers})",
                "folds": ">= 1", "workers": ">= 1", "cpus_per_worker": "> 0"}
        for name, ok, value in checks:
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise FineTuneError(f"--finetune.{name} must be {need[name]}, got {value}")

    def recipe(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("workers", "cpus_per_worker", "use_gpu"):
            d.pop(k)
        d["max_lr"] = self.peak_lr
        return d

    def hash(self, task: TaskSpec, embed_version: str, bootstrap: ProbeConfig) -> str:
        """The config hash of a fine-tune result's key: recipe + task + view + interval."""
        return stable_hash({"finetune": self.recipe(), "task": task.fingerprint(),
                            "embed": embed_version,
                            "bootstrap": [bootstrap.n_bootstrap, bootstrap.confidence,
                                          bootstrap.seed]})


@dataclass
class FineTuneResult:
    metric: str
    value: float
    lower: float
    upper: float
    n_records: int
    n_test: int
    classes: list[str]
    per_class: dict[str, float] = field(default_factory=dict)
    folds: list[dict[str, Any]] = field(default_factory=list)   # per fold: losses, stop epoch
    device: str = "cpu"
    precision: str = "fp32"
    seconds: float = 0.0


# ------------------------------------------------------------------------------ the splits

def fold_splits(task: TaskSpec, y: np.ndarray, records: list[dict], groups: np.ndarray,
                folds: int | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train, val, test) index arrays over the labelled records, as the probes split them."""
    kind, sch = task.label.kind, task.scheme
    if sch.kind == "folds":
        fold = np.array([_norm(get_field(r, sch.field)) if get_field(r, sch.field) is not None
                         else "" for r in records])
        parts = [np.flatnonzero(np.isin(fold, list(p))) for p in (sch.train, sch.val, sch.test)]
        if not all(len(p) for p in parts):
            raise ValueError(f"{task.name}: folds scheme found train/val/test sizes "
                             f"{'/'.join(str(len(p)) for p in parts)}; is '{sch.field}' in the "
                             f"records' metadata?")
        return [tuple(parts)]
    out = []
    for i, (otr, ote) in enumerate(_group_folds(kind, y, groups, sch.k, sch.seed)):
        # The probes' inner folds of this outer training part; the first is the validation part.
        itr, iva = _group_folds(kind, y[otr], groups[otr], sch.inner_k, sch.seed + 1 + i)[0]
        out.append((otr[itr], otr[iva], ote))
    return out[:folds] if folds else out


def _targets(kind: str, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, np.float32)
    return y[:, None] if y.ndim == 1 else y


# ----------------------------------------------------------------------- the Ray Train loop

def _loss_fn(kind: str):
    import torch

    return (torch.nn.MSELoss(reduction="none") if kind == "regression"
            else torch.nn.BCEWithLogitsLoss(reduction="none"))


def _all_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _predict(module, x, idx: np.ndarray, batch: int, device, autocast: bool):
    """Outputs of `module` (not the DDP wrapper: it would wait for the other ranks) on x[idx]."""
    import torch

    module.eval()
    outs = []
    with torch.inference_mode():
        for s in range(0, len(idx), batch):
            xb = torch.from_numpy(x[idx[s:s + batch]]).to(device).unsqueeze(1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                outs.append(module(xb).float().cpu())
    return torch.cat(outs) if outs else torch.zeros((0, 1))


def _train_fold(ctx, cfg: FineTuneConfig, spec: ModelSpec, kind: str, x, y, split, fold: int):
    import torch
    import ray.train
    import ray.train.torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    tr, va, te = (np.asarray(s, dtype=np.int64) for s in split)
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    device = ray.train.torch.get_device()
    autocast = device.type == "cuda"
    y = y.copy()
    if kind == "regression":
        # Standardise on the training part so that lr and the MSE scale suit any unit.
        mu, sd = float(y[tr].mean()), float(y[tr].std() + 1e-6)
        y = (y - mu) / sd
    torch.manual_seed(cfg.seed + fold)
    encoder = spec.build()
    # The released architecture keeps BatchNorm modules that forward never uses: frozen, as in
    # pretraining (train/objectives.py), so DDP does not wait for their gradients.
    unused = set(encoder.unused_state_keys())
    for name, p in encoder.named_parameters():
        p.requires_grad_(name not in unused)
    model = torch.nn.Sequential(encoder, torch.nn.Linear(encoder.embedding_dim, y.shape[1]))
    module = model.to(device)
    model = ray.train.torch.prepare_model(model, move_to_device=device) if world > 1 else module
    per_rank = math.ceil(cfg.batch_size / world)
    train_ds = TensorDataset(torch.from_numpy(x[tr]), torch.from_numpy(y[tr]))
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg.seed + fold)
    loader = DataLoader(train_ds, batch_size=per_rank, sampler=sampler)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.peak_lr,
                                                total_steps=cfg.max_epochs * len(loader))
    loss_fn = _loss_fn(kind)
    my_val = va[rank::world]
    best, best_seen, wait, best_epoch, best_state = math.inf, math.inf, 0, 0, None
    history: list[dict[str, float]] = []
    for epoch in range(cfg.max_epochs):
        sampler.set_epoch(epoch)
        model.train()
        tot, n = 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.to(device).unsqueeze(1), yb.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(xb)
            loss = loss_fn(out.float(), yb).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot, n = tot + float(loss) * len(xb), n + len(xb)
        out = _predict(module, x, my_val, per_rank, device, autocast)
        vsum = float(loss_fn(out, torch.from_numpy(y[my_val])).mean(1).sum()) if len(my_val) else 0.0
        tsum, tn, vs, vn = _all_sum([tot, n, vsum, len(my_val)], device)
        val_loss, train_loss = vs / vn, tsum / tn
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss})
        if val_loss < best_seen:            # the best weights (the release's ModelCheckpoint)
            best_seen, best_epoch = val_loss, epoch + 1
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if val_loss < best - cfg.min_delta:  # early stopping's notion of an improvement
            best, wait = val_loss, 0
        else:
            wait += 1
        ray.train.report({"fold": fold, "epoch": epoch + 1, "train_loss": train_loss,
                          "val_loss": val_loss, "lr": sched.get_last_lr()[0]})
        if wait >= cfg.patience:
            break
    module.load_state_dict(best_state)
    scores = None
    if rank == 0:
        out = _predict(module, x, te, per_rank, device, autocast)
        if kind == "regression":
            scores = (out[:, 0] * sd + mu).numpy()
        else:
            s = torch.sigmoid(out).numpy()
            scores = s[:, 0] if kind == "binary" else s
    return {"fold": fold, "history": history, "stop_epoch": len(history),
            "best_epoch": best_epoch, "n_train": len(tr), "n_val": len(va), "n_test": len(te),
            "stopped_early": len(history) < cfg.max_epochs}, scores


def train_func(config: dict) -> None:
    """Every worker: fine-tune each fold in turn; rank 0 reports the test predictions."""
    import ray
    import ray.train
    import torch

    ctx = ray.train.get_context()
    torch.set_num_threads(max(1, int(config["threads"])))
    cfg = FineTuneConfig(**config["cfg"])
    x, y = ray.get(config["x"]), ray.get(config["y"])
    folds, preds = [], []
    for i, split in enumerate(config["splits"]):
        info, scores = _train_fold(ctx, cfg, config["spec"], config["kind"], x, y, split, i)
        folds.append(info)
        if scores is not None:
            preds.append(np.asarray(scores, np.float64).tolist())
    # Ray Train (v2) keeps only the metrics reported with a checkpoint: rank 0 hands back the
    # folds and its test predictions as a small JSON file in one (a temporary run folder).
    with tempfile.TemporaryDirectory(prefix="clef-finetune-out-") as d:
        checkpoint = None
        if ctx.get_world_rank() == 0:
            with open(f"{d}/{OUT_FILE}", "w") as f:
                json.dump({"folds": folds, "preds": preds}, f)
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({"done": True, "folds": len(folds)}, checkpoint=checkpoint)


# ------------------------------------------------------------------------------ the driver

def run_finetune(cfg: FineTuneConfig, spec: ModelSpec, task: TaskSpec, labels: Labels,
                 views: np.ndarray, records: list[dict], groups: np.ndarray,
                 bootstrap: ProbeConfig = ProbeConfig()) -> FineTuneResult:
    """Fine-tune `spec` on `task` (evaluation views [N, window] of `records`) through Ray
    Train; the interval uses the probes' bootstrap settings (`bootstrap`)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    kind = task.label.kind
    keep = labels.has_label
    x = np.ascontiguousarray(views[keep], dtype=np.float32)
    y = _targets(kind, labels.y[keep])
    recs = [r for r, k in zip(records, keep) if k]
    groups = np.asarray(groups)[keep]
    splits = fold_splits(task, labels.y[keep], recs, groups, cfg.folds)
    use_gpu = (cfg.use_gpu if cfg.use_gpu is not None
               else ray.cluster_resources().get("GPU", 0) > 0)
    device, precision = ("cuda", "bf16 autocast") if use_gpu else ("cpu", "fp32")
    log.info("fine-tuning %s on %s: %d fold(s), %d workers on %s, %s%s", spec.checkpoint_id,
             task.name, len(splits), cfg.workers, device, precision,
             "" if use_gpu else " (bf16 autocast only on GPU)")
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    with tempfile.TemporaryDirectory(prefix="clef-finetune-") as storage:
        trainer = TorchTrainer(
            train_func,
            train_loop_config={"cfg": asdict(cfg), "spec": spec, "kind": kind,
                               "x": ray.put(x), "y": ray.put(y),
                               "splits": [tuple(s.tolist() for s in sp) for sp in splits],
                               "threads": max(1, int(cfg.cpus_per_worker))},
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(name="finetune", storage_path=storage))
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        with result.checkpoint.as_directory() as d, open(f"{d}/{OUT_FILE}") as f:
            m = json.load(f)
    folds = m["folds"]
    te = np.concatenate([np.asarray(s[2], int) for s in splits])
    scores = np.concatenate([np.asarray(p) for p in m["preds"]])
    y_eval = labels.y[keep][te]
    if kind == "regression":
        y_eval = y_eval.astype(float)
    value = _metric(kind, y_eval, scores)
    lo, hi = bootstrap_ci(kind, y_eval, scores, groups[te], bootstrap.n_bootstrap,
                          bootstrap.confidence, bootstrap.seed)
    per_class = {}
    if kind == "multilabel":
        per_class = {c: auroc(y_eval[:, j], scores[:, j]) for j, c in enumerate(labels.classes)}
    elif kind == "binary":
        per_class = {labels.classes[0]: value}
    for f in folds:
        log.info("%s fold %d: stopped after epoch %d (best %d), val losses %s", task.name,
                 f["fold"], f["stop_epoch"], f["best_epoch"],
                 [round(h["val_loss"], 4) for h in f["history"]])
    return FineTuneResult(metric=task.metric, value=value, lower=lo, upper=hi,
                          n_records=int(keep.sum()), n_test=len(te),
                          classes=list(labels.classes), per_class=per_class, folds=folds,
                          device=device, precision=precision,
                          seconds=time.perf_counter() - t0)

