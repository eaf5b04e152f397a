"""The per-worker training loop (runs inside every Ray Train worker), top to bottom.

    config -> seeds -> model -> engine (DeepSpeed or DDP; optimiser + schedule) ->
    checkpointer.resume -> data -> metrics -> loop { micro-batches -> forward/backward ->
    finite check (all ranks) -> step -> metrics -> checkpoint + export }

The components (each a typed config + build function): `engine.py`, `checkpointer.py`,
`data_builder.py`, `metrics.py` (`MetricsSink`). docs/architecture.md walks one step.

Test hooks in the loop config (never set by the CLI): `trace_dir` / `trace_steps` (what reached
the loss, per rank and micro-step; events with PIDs and parameter digests), `nan_grad`
({"rank": r, "step": s}: rank r's gradients become NaN in step s, 0-based), `nan_loss` (the
same, for the loss itself: the loss-not-finite alert's test), `stall`
({"rank": r, "step": s, "seconds": x}: rank r sleeps x s inside step s, a stalled worker for
the monitoring alerts' test).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time

import numpy as np
import torch

log = logging.getLogger("clef_platform.train")


def _nan_hook(module):
    """Make one parameter's gradient NaN on this rank (test hook); returns the handle."""
    p = next(p for p in module.parameters() if p.requires_grad)
    return p.register_hook(lambda g: torch.full_like(g, float("nan")))


def _all_ranks_finite(ok: bool) -> bool:
    import torch.distributed as dist

    t = torch.tensor([0 if ok else 1], dtype=torch.int32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item() == 0


def _mean_over_ranks(x: float) -> float:
    import torch.distributed as dist

    t = torch.tensor([x], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return float(t.item())


def train_loop(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    from clef_model.flops import train_step_flops
    from clef_platform.train import data as D
    from clef_platform.train.checkpointer import Checkpointer, CheckpointerConfig
    from clef_platform.train.config import PretrainConfig
    from clef_platform.train.data_builder import DataBuilderConfig, build_data
    from clef_platform.train.engine import EngineConfig, build_engine
    from clef_platform.train.metrics import MetricsSinkConfig, build_metrics_sink
    from clef_platform.train.objectives import build_module
    from clef_platform.train.recipes import EarlyStopping

    # ---- config, rank, device, seeds -----------------------------------------------------
    cfg = PretrainConfig.from_dict(loop_config["cfg"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Every rank's host address, in rank order, goes into each report: the run's checkpoint
    # record (Ray's snapshot) then says which hosts trained it (and, after a lost host, where
    # the run went on).
    workers = [ray.util.get_node_ip_address()] * world
    if world > 1:
        import torch.distributed as dist
        dist.all_gather_object(workers, workers[0])
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    torch.manual_seed(cfg.seed)  # same init on every rank (DeepSpeed/DDP also broadcast rank 0)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    accum = cfg.optim.grad_accum
    trace_dir, nan_grad = loop_config.get("trace_dir"), loop_config.get("nan_grad")
    stall, nan_loss = loop_config.get("stall"), loop_config.get("nan_loss")

    # ---- model, engine (optimiser, schedule) -----------------------------------------------
    spe = loop_config.get("steps_per_epoch", 1)
    engine = build_engine(EngineConfig.from_pretrain(cfg, spe), build_module(cfg), device, world)
    model = engine.module
    model.attach_target(device)

    # ---- resume: the newest checkpoint that verifies ---------------------------------------
    ckpt = Checkpointer(CheckpointerConfig.from_pretrain(cfg, loop_config.get("lineage") or []),
                        rank, world)
    step = ckpt.resume(engine, model, ckpt.candidates(ray.train.get_checkpoint(),
                                                      loop_config.get("resume_from")))

    # ---- data, metrics ---------------------------------------------------------------------
    data = build_data(DataBuilderConfig(cfg, spe, loop_config.get("risk_table"), trace_dir,
                                        loop_config.get("n_records", 0)),
                      rank, world, step)
    # Early stopping on the epoch's mean training loss (recipe paper); its state is not in the
    # checkpoint yet, so a resumed run counts patience afresh.
    stopper = EarlyStopping(cfg.patience, cfg.patience_delta)
    epoch_loss, epoch_steps = 0.0, 0
    # FLOP per record: its two views through the encoder, 3 x forward (clef_model.flops).
    flops = train_step_flops(cfg.scale, cfg.data.view_length, views=2)
    sink = build_metrics_sink(MetricsSinkConfig(port=cfg.metrics.port,
                                                log_every=cfg.metrics.log_every,
                                                total_steps=cfg.steps,
                                                global_batch=cfg.global_batch, grad_accum=accum,
                                                run=cfg.checkpoint.run_name,
                                                backend=cfg.metrics.backend,
                                                flops_per_sample=flops,
                                                peak_flops=cfg.metrics.peak_flops,
                                                nonfinite_hold_s=cfg.metrics.nonfinite_hold_s),
                              rank, world, loop_config.get("progress_board"))
    resumed_from = step             # in every report: where this worker group started
    if step:
        sink.checkpointed(step)
    if trace_dir:  # debugging / tests: who ran (PIDs survive in the file across restarts)
        D.trace_event(trace_dir, rank, {"event": "start", "pid": os.getpid(), "step": step})

    # ---- the loop -----------------------------------------------------------------------------
    model.train()
    while step < cfg.steps:
        t0 = time.perf_counter()
        wait, loss_sum, losses_finite = 0.0, 0.0, True
        hook = _nan_hook(model) if nan_grad and nan_grad == {"rank": rank, "step": step} else None
        if stall and (stall["rank"], stall["step"]) == (rank, step):
            time.sleep(stall["seconds"])
        for micro in range(accum):
            tw = time.perf_counter()
            batch = next(data)
            wait += time.perf_counter() - tw
            v1, v2, risk, missing = data.inputs(batch, device)
            with engine.micro(last=micro == accum - 1):
                loss = engine.forward(v1, v2, risk, missing)
                if nan_loss == {"rank": rank, "step": step}:
                    loss = loss * float("nan")
                engine.backward(loss)
            loss_val = float(loss.detach())
            if trace_dir and step < loop_config.get("trace_steps", 0):
                D.write_trace(trace_dir, rank, step, micro, batch, risk, missing, loss_val, v1)
            losses_finite &= math.isfinite(loss_val)
            loss_sum += loss_val
        if hook is not None:
            hook.remove()
        # Every rank learns whether any rank's loss or gradients are not finite, and all stop
        # here, before the optimiser has changed any parameter.
        if not _all_ranks_finite(losses_finite and engine.grads_finite()):
            # A non-finite loss on any rank is the loss-not-finite alert's input: the rank that
            # saw it publishes it and every rank holds (one that failed at once would take the
            # worker group, and the published value with it, down before a scrape).
            if not _all_ranks_finite(losses_finite):
                sink.nonfinite(step + 1, None if losses_finite else loss_sum / accum)
            if trace_dir:
                with engine.full_params(model):
                    D.trace_event(trace_dir, rank, {"event": "nonfinite", "step": step,
                                                    "params_sha256": D.param_digest(model)})
            sink.close()
            raise FloatingPointError(f"non-finite loss or gradients in step {step + 1} (on at "
                                     f"least one rank); no parameter was updated")
        grad_norm = engine.step()
        model.after_step()
        step += 1
        loss_val = loss_sum / accum
        report = sink.step(step=step, loss=loss_val, lr=engine.lr(), grad_norm=grad_norm,
                           step_s=time.perf_counter() - t0, wait_s=wait, device=device)
        report["damaged_skipped"] = data.damaged
        epoch_loss, epoch_steps = epoch_loss + loss_val, epoch_steps + 1
        stop = False
        if step % spe == 0:   # an epoch ended: the same mean loss on every rank decides
            mean = _mean_over_ranks(epoch_loss / epoch_steps)
            stop = stopper.update(mean) and step < cfg.steps
            report["epoch"], report["epoch_loss"] = step // spe, mean
            if stop and rank == 0:
                log.info("early stop after epoch %d: training loss %.5f has not improved on "
                         "%.5f by %g for %d epochs", step // spe, mean, stopper.best,
                         cfg.patience_delta, cfg.patience)
            epoch_loss, epoch_steps = 0.0, 0
        report["workers"] = workers
        report["resumed_from"] = resumed_from

        # ---- checkpoint + export ------------------------------------------------------------
        if ckpt.due(step) or stop:
            with ckpt.save(engine, model, step) as folder:
                with engine.full_params(model.encoder):   # ZeRO-3: gather on every rank
                    if rank == 0:
                        report["export"] = ckpt.export(model.encoder, step, loss_val)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
            sink.checkpointed(step)
            if trace_dir:
                with engine.full_params(model):
                    D.trace_event(trace_dir, rank, {"event": "checkpoint", "step": step,
                                                    "params_sha256": D.param_digest(model)})
        if stop:
            break
    sink.close()
    if rank == 0:
        log.info("finished %d steps", step)
