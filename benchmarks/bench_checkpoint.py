"""Checkpoint save and load time: DeepSpeed's default format against the platform's.

    .venv/bin/python benchmarks/bench_checkpoint.py [--scales small medium] [--repeats 3]

One process (world size 1, gloo), a PretrainModule (clef) of each scale under DeepSpeed ZeRO-1
after one optimiser step (so the AdamW moments exist). Old = DeepSpeed's own
`TorchCheckpointEngine` (torch.save of its dicts; load with torch.load(weights_only=False)).
New = `PlainCheckpointEngine` (plain-state conversion, torch.load(weights_only=True)) plus what
the checkpointer adds: the loop's state file, the run file and the SHA-256 digest list on
save; verification of every file before the load. Median of --repeats; ratios new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def build(scale: str):
    import torch

    from clef_platform.train.engine import EngineConfig, build_engine
    from clef_platform.train.objectives import PretrainModule

    torch.manual_seed(0)
    engine = build_engine(EngineConfig(deepspeed=True, zero_stage=1, micro_batch=2,
                                       warmup_steps=1, total_steps=10),
                          PretrainModule(scale, "clef"), torch.device("cpu"), 1)
    x = torch.randn(2, 1, 5000)
    with engine.micro(True):
        engine.backward(engine.forward(x, x + 0.1, torch.zeros(2), torch.ones(2)))
    engine.step()
    return engine


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(scale: str, repeats: int) -> dict:
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    from clef_platform.layout import checkpoint as CK
    from clef_platform.train.checkpointer import Checkpointer, CheckpointerConfig
    from clef_platform.train.ds_plain import PlainCheckpointEngine

    engine = build(scale)
    ck = Checkpointer(CheckpointerConfig(run_name="bench", total_steps=10), 0, 1)
    out = {"params": sum(p.numel() for p in engine.module.parameters())}
    root = Path(tempfile.mkdtemp(prefix="clef-bench-ckpt-"))
    try:
        times = {k: [] for k in ("old_save", "old_load", "new_save", "new_load")}
        for i in range(repeats):
            old, new = root / f"old{i}", root / f"new{i}"
            engine.ds.checkpoint_engine = TorchCheckpointEngine()
            times["old_save"].append(timed(lambda: engine.ds.save_checkpoint(
                str(old), tag="step_1", save_latest=False)))
            times["old_load"].append(timed(lambda: engine.ds.load_checkpoint(
                str(old), tag="step_1")))
            engine.ds.checkpoint_engine = PlainCheckpointEngine()
            new.mkdir()
            times["new_save"].append(timed(lambda: ck.write(new, engine, engine.module, 1)))
            times["new_load"].append(timed(lambda: ck._load(new, CK.verify(new), engine,
                                                            engine.module)))
            out.setdefault("bytes_old", sum(p.stat().st_size for p in old.rglob("*") if p.is_file()))
            out.setdefault("bytes_new", sum(p.stat().st_size for p in new.rglob("*") if p.is_file()))
        for k, v in times.items():
            out[f"{k}_s"] = statistics.median(v)
        out["save_ratio_new_over_old"] = out["new_save_s"] / out["old_save_s"]
        out["load_ratio_new_over_old"] = out["new_load_s"] / out["old_load_s"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", nargs="+", default=["small", "medium"])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    import logging

    import socket

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    results = {}
    for scale in a.scales:
        r = results[scale] = bench(scale, a.repeats)
        print(f"{scale} ({r['params'] / 1e6:.1f} M params, ZeRO-1, {r['bytes_old'] / 1e6:.0f} MB "
              f"old / {r['bytes_new'] / 1e6:.0f} MB new): save {r['old_save_s']:.2f} s -> "
              f"{r['new_save_s']:.2f} s ({r['save_ratio_new_over_old']:.2f}x), load "
              f"{r['old_load_s']:.2f} s -> {r['new_load_s']:.2f} s incl. verification "
              f"({r['load_ratio_new_over_old']:.2f}x)", flush=True)
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
