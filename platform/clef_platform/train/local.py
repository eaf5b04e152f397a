"""Single-process CLEF pretraining on a folder of WFDB records (no Ray, no object store).

The smallest honest version of the platform's main job: read a corpus through the ingestion
read path, compute each record's SCORE2 risk from the age and sex in its header (the other five
inputs counted as missing), and train an encoder with the CLEF objective. It shares the
distributed loop's components: the module (`objectives.PretrainModule`), the engine (`DDPEngine`
at world size 1: AdamW, the one warmup+cosine schedule, the finite check before the step) and
the checkpoint format (`Checkpointer.write`: plain state + digest list, `layout.checkpoint`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clef_model import save_encoder
from clef_model.risk import score2_with_missing
from clef_model.views import ViewConfig, make_views, record_seeds
from clef_platform.ingest.adapters import get_adapter
from clef_platform.ingest.canonical import process_record
from clef_platform.ingest.record import CanonicalRecord

log = logging.getLogger(__name__)


@dataclass
class LocalPretrainConfig:
    source: Path                      # the corpus folder
    out_dir: Path                     # checkpoint and export land here
    corpus: str = "ludb"              # registered corpus adapter that lists the records
    scale: str = "small"
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    temperature: float = 0.07
    seed: int = 0
    log_every: int = 10


@dataclass
class InMemoryCorpus:
    keys: list[str]
    signals: torch.Tensor             # float32 [N, 12, T] millivolts
    lead_mask: torch.Tensor           # bool [N, 12]
    risk: torch.Tensor                # float32 [N]
    missing: torch.Tensor             # float32 [N]


def load_corpus(source: Path, corpus: str, length: int) -> InMemoryCorpus:
    """Reads and validates every record; quarantined ones are logged and left out."""
    adapter = get_adapter(corpus)
    kept: list[CanonicalRecord] = []
    quarantined = too_short = 0
    for ref in adapter.list_records(Path(source)):
        result = process_record(ref)
        if not isinstance(result, CanonicalRecord):
            quarantined += 1
            log.warning("quarantined %s: %s (%s)", ref.record_id, result.reason, result.detail)
        elif result.digital.shape[1] < length:
            too_short += 1   # views need `length` samples; the corpus must be stackable
        else:
            kept.append(result)
    if not kept:
        raise ValueError(f"no usable record under {source}")
    # Records are cropped to a common length here; views cut their own window from it.
    signals = np.stack([r.millivolts()[:, :length] for r in kept])
    age = np.array([np.nan if r.ref.age is None else r.ref.age for r in kept], dtype=float)
    male = np.array([{"M": 1.0, "F": 0.0}.get(r.ref.sex or "", np.nan) for r in kept])
    nan = np.full(len(kept), np.nan)
    risk, missing = score2_with_missing(age, male, nan, nan, nan, nan, nan)
    log.info("loaded %d records from %s (%d quarantined, %d shorter than %d samples)",
             len(kept), source, quarantined, too_short, length)
    return InMemoryCorpus(
        keys=[f"{r.ref.corpus}/{r.ref.record_id}" for r in kept],
        signals=torch.from_numpy(signals),
        lead_mask=torch.from_numpy(np.stack([r.lead_mask for r in kept])),
        risk=torch.as_tensor(risk, dtype=torch.float32),
        missing=torch.as_tensor(missing, dtype=torch.float32),
    )


def pretrain(cfg: LocalPretrainConfig) -> dict:
    from clef_platform.train.checkpointer import Checkpointer, CheckpointerConfig
    from clef_platform.train.engine import EngineConfig, build_engine
    from clef_platform.train.objectives import PretrainModule

    torch.manual_seed(cfg.seed)
    view_cfg = ViewConfig()
    data = load_corpus(cfg.source, cfg.corpus, view_cfg.length)
    n = len(data.keys)
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = n // batch_size

    module = PretrainModule(cfg.scale, "clef", temperature=cfg.temperature)
    engine = build_engine(EngineConfig(deepspeed=False, micro_batch=batch_size, grad_clip=0.0,
                                       lr=cfg.lr, weight_decay=cfg.weight_decay,
                                       warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                                       min_lr_ratio=cfg.min_lr_ratio),
                          module, torch.device("cpu"), world=1)
    model = engine.module
    model.train()

    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        epoch, position = divmod(step, steps_per_epoch)
        # One seeded permutation per epoch: every record is seen once per epoch.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        idx = order[position * batch_size:(position + 1) * batch_size]
        seeds = record_seeds(cfg.seed, [data.keys[i] for i in idx.tolist()], epoch)
        v1, v2 = make_views(data.signals[idx], data.lead_mask[idx], seeds, view_cfg)

        lr = engine.lr()
        loss = engine.forward(v1, v2, data.risk[idx], data.missing[idx])
        engine.backward(loss)
        if not (np.isfinite(loss.item()) and engine.grads_finite()):
            raise FloatingPointError(f"non-finite loss or gradients in step {step + 1}")
        engine.step()
        model.after_step()

        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step == 0:
            recent = float(np.mean(losses[-cfg.log_every:]))
            rate = (step + 1) * batch_size / (time.perf_counter() - t0)
            log.info("step %4d/%d  epoch %d  loss %.4f  lr %.2e  %.1f samples/s",
                     step + 1, cfg.steps, epoch, recent, lr, rate)

    ckpt_dir = cfg.out_dir / "checkpoint"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # The distributed job's checkpoint format: plain state (weights_only) + digest list.
    Checkpointer(CheckpointerConfig(storage=str(cfg.out_dir), run_name="local",
                                    total_steps=cfg.steps), 0, 1).write(ckpt_dir, engine, model,
                                                                        cfg.steps)
    save_encoder(model.encoder, cfg.out_dir / "export")
    window = max(1, min(20, cfg.steps // 5))
    summary = {
        "records": n,
        "steps": cfg.steps,
        "first_loss": float(np.mean(losses[:window])),
        "last_loss": float(np.mean(losses[-window:])),
        "seconds": time.perf_counter() - t0,
        "checkpoint": str(ckpt_dir),
        "export": str(cfg.out_dir / "export"),
    }
    return summary
