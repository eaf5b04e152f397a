"""The per-worker training loop (runs inside every Ray Train worker), top to bottom.

    config -> device/seed -> model -> optimiser + warmup/cosine -> DeepSpeed (or DDP) ->
    resume -> data -> loop { batch -> views -> loss -> backward -> step -> metrics ->
    checkpoint + export }

Checkpoints: every rank calls `engine.save_checkpoint` into its own temp folder and passes it to
`ray.train.report(checkpoint=...)`; Ray merges the ranks' files into one checkpoint under
`<storage>/<run-name>/`. Rank 0 also exports the encoder (clef_platform.train.export). On a
restart (worker failure) or a `--resume` rerun, `ray.train.get_checkpoint()` is the latest one and
the step count, optimiser, LR schedule (and BYOL/MoCo momentum state) continue from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("clef_platform.train")

CLIENT_STATE = "clef_client_state.pt"


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr after `step` optimiser steps: linear warmup, then cosine."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def deepspeed_config(cfg, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_per_worker,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": bf16},
        # A torch AdamW is passed in: DeepSpeed's FusedAdam / CPUAdam JIT-compile an op (~100 s
        # on CPU); torch's fused/foreach AdamW is as fast for this model size.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


def _full_params(module, engine):
    """Context in which `module`'s parameters are whole on every rank (ZeRO-3 partitions them)."""
    import contextlib

    if engine is None or engine.zero_optimization_stage() < 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)


def train_loop(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    from clef_model.views import ViewConfig, make_views
    from clef_platform.train import data as D
    from clef_platform.train.config import PretrainConfig
    from clef_platform.train.export import export_encoder
    from clef_platform.train.metrics import TrainMetrics
    from clef_platform.train.objectives import build_module

    # ---- config, rank, device, seeds -----------------------------------------------------
    t_start = time.time()
    cfg = PretrainConfig.from_dict(loop_config["cfg"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    torch.manual_seed(cfg.seed)  # same init on every rank (DeepSpeed/DDP also broadcast rank 0)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    bf16 = cfg.bf16
    accum = cfg.optim.grad_accum

    # ---- model, optimiser, schedule --------------------------------------------------------
    module = build_module(cfg)
    trainable = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.optim.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.optim.warmup_steps, cfg.steps, cfg.optim.min_lr_ratio))

    if cfg.deepspeed.enabled:
        import deepspeed  # imported here, never in the driver (see stack-notes)
        import deepspeed.ops

        if not cfg.use_gpu:
            # The shared-memory comm op is only used by inference all-reduce, and building it
            # JIT-compiles C++ for ~60 s on first use; training all-reduces go through gloo.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=module.to(device), optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(cfg, bf16))
        model = engine.module
    else:
        engine = None
        model = module
        wrapped = ray.train.torch.prepare_model(module, move_to_device=device,
                                                parallel_strategy="ddp" if world > 1 else None)
    model.attach_target(device)

    # ---- resume ----------------------------------------------------------------------------
    step = 0
    # After a worker failure Ray hands back the latest reported checkpoint; on a --resume rerun
    # the driver found the run's latest one on storage.
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and loop_config.get("resume_from"):
        ckpt = ray.train.Checkpoint(loop_config["resume_from"])
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if engine is not None:
                _, client = engine.load_checkpoint(d, tag=None)
                client = client or {}
            else:
                client = torch.load(Path(d) / CLIENT_STATE, map_location="cpu", weights_only=True)
                model.load_state_dict(client["model"])
                optimizer.load_state_dict(client["optimizer"])
                scheduler.load_state_dict(client["scheduler"])
            step = int(client["step"])
            model.load_extra_state(client.get("extra", {}))
        if rank == 0:
            log.info("resumed from checkpoint at step %d", step)

    # ---- data -------------------------------------------------------------------------------
    risk_table = D.resolve_risk_table(loop_config.get("risk_table"))
    vcfg = ViewConfig(length=cfg.data.view_length, seed=cfg.seed)
    batches = D.make_batches(cfg, rank, world, risk_table, vcfg, start_micro=step * accum,
                             steps_per_epoch=loop_config.get("steps_per_epoch", 1))

    # ---- metrics ------------------------------------------------------------------------------
    metrics = TrainMetrics(rank, world)
    metrics.serve(cfg.metrics.port)
    board = loop_config.get("progress_board")
    trace_dir = loop_config.get("trace_dir")
    if trace_dir:  # debugging / tests: who ran (PIDs survive in the file across restarts)
        D.trace_event(trace_dir, rank, {"event": "start", "pid": os.getpid(), "step": step})
    last_ckpt = step if ckpt is not None else None
    run_dir = f"{cfg.checkpoint.storage.rstrip('/')}/{cfg.checkpoint.run_name}"

    # ---- the loop -----------------------------------------------------------------------------
    model.train()
    damaged = 0                # shards/records skipped by the loader (data.on_damage=skip)
    t_first = None             # duration of the first step (compilation, allocator warm-up)
    t_first_wall = None        # wall clock at the end of the first step (time to first step)
    steady_s, steady_n = 0.0, 0  # step time after the first step, for the mean throughput
    while step < cfg.steps:
        t0 = time.perf_counter()
        wait = 0.0
        loss_sum = 0.0
        for micro in range(accum):
            tw = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - tw
            for what in batch.get("damaged", ()):
                damaged += 1
                log.warning("rank %d: %s (skipped; %d so far)", rank, what, damaged)
                if trace_dir:
                    D.trace_event(trace_dir, rank, {"event": "damaged", "step": step,
                                                    "what": what})
            if "v1" in batch:  # views made in the DataLoader workers
                v1, v2 = batch["v1"].to(device), batch["v2"].to(device)
            else:  # views made here, batched, on the training device
                v1, v2 = make_views(batch["signals"].to(device), batch["lead_mask"].to(device),
                                    batch["seeds"].to(device), vcfg)
            risk, missing = batch["risk"].to(device), batch["missing"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and engine is None):
                if engine is not None:
                    loss = engine(v1, v2, risk, missing)
                else:
                    loss = wrapped(v1, v2, risk, missing)
            if trace_dir and step < loop_config.get("trace_steps", 0):
                D.write_trace(trace_dir, rank, step, micro, batch, risk, missing, float(loss))
            if engine is not None:
                engine.backward(loss)
                engine.step()  # applies the update (clip, AdamW, schedule) at the accumulation boundary
            else:
                (loss / accum).backward()
            loss_sum += float(loss.detach())
        if engine is not None:
            grad_norm = engine.get_global_grad_norm()
            grad_norm = float(grad_norm) if grad_norm is not None else None
        else:
            params = [p for p in model.parameters() if p.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        model.after_step()
        step += 1
        lr = scheduler.get_last_lr()[0]
        step_s = time.perf_counter() - t0
        if t_first is None:
            t_first, t_first_wall = step_s, time.time()
        else:
            steady_s, steady_n = steady_s + step_s, steady_n + 1
        loss_val = loss_sum / accum
        if not math.isfinite(loss_val):
            raise FloatingPointError(f"loss is {loss_val} at step {step}")
        metrics.update(step=step, loss=loss_val, lr=lr, grad_norm=grad_norm, step_s=step_s,
                       wait_s=wait, samples=cfg.batch_per_worker * accum, device=device)
        if rank == 0 and (step % cfg.metrics.log_every == 0 or step == cfg.steps or step == 1):
            info = {"step": step, "steps": cfg.steps, "loss": loss_val, "lr": lr,
                    "grad_norm": grad_norm, "step_s": step_s, "wait_frac": wait / step_s,
                    "samples_per_s": cfg.global_batch * accum / step_s,
                    "last_ckpt": last_ckpt, "first_step_s": t_first}
            log.info("step %d/%d loss %.4f lr %.2e grad_norm %s %.1f samples/s data-wait %.0f%%",
                     step, cfg.steps, loss_val, lr, grad_norm, info["samples_per_s"],
                     100 * wait / step_s)
            if board is not None:
                board.push.remote(info)

        # ---- checkpoint + export ------------------------------------------------------------
        report = {"step": step, "loss": loss_val, "lr": lr,
                  "grad_norm": grad_norm if grad_norm is not None else float("nan"),
                  "first_step_s": t_first, "first_step_end_unix": t_first_wall,
                  "train_start_unix": t_start, "damaged_skipped": damaged,
                  # global samples/s averaged over the steps after the first (lock-step ranks)
                  "samples_per_s": (cfg.global_batch * accum * steady_n / steady_s
                                    if steady_n else float("nan"))}
        if step % cfg.checkpoint.every == 0 or step == cfg.steps:
            client = {"step": step, "extra": model.extra_state()}
            with tempfile.TemporaryDirectory(prefix=f"clef-ckpt-r{rank}-") as d:
                if engine is not None:
                    engine.save_checkpoint(d, tag=f"step_{step}", client_state=client)
                elif rank == 0:
                    client.update(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                  scheduler=scheduler.state_dict())
                    torch.save(client, Path(d) / CLIENT_STATE)
                with _full_params(model.encoder, engine):  # ZeRO-3: gather on every rank
                    if rank == 0:
                        url = export_encoder(model.encoder, cfg.checkpoint.storage,
                                             cfg.checkpoint.run_name, step,
                                             extra={"method": cfg.method, "loss": loss_val})
                if rank == 0:
                    report["export"] = url
                    with open(Path(d) / "clef_run.json", "w") as f:
                        json.dump({"step": step, "export": url, "run_dir": run_dir,
                                   "config": cfg.to_dict()}, f, indent=1)
                has_files = engine is not None or rank == 0
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(d)
                                 if has_files else None)
            last_ckpt = step
            metrics.checkpointed(step)
            if trace_dir:
                with _full_params(model, engine):
                    D.trace_event(trace_dir, rank, {"event": "checkpoint", "step": step,
                                                    "params_sha256": D.param_digest(model)})
    metrics.close()
    if rank == 0:
        log.info("finished %d steps", step)
