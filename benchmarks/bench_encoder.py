"""Encoder forward+backward throughput on CPU (samples/s), per scale.

    .venv/bin/python benchmarks/bench_encoder.py --scales small medium --batch 32 --iters 2

Times whole training-style steps (forward, a scalar loss, backward; no optimiser) on random
z-scored-like input of shape [batch, 1, length], after `--warmup` untimed steps.
"""

from __future__ import annotations

import argparse
import time

import torch

from clef_model.net1d import build_encoder


def bench(scale: str, batch: int, length: int, warmup: int, iters: int,
          bf16: bool = False, activation_checkpointing: bool = False) -> dict:
    torch.manual_seed(0)
    model = build_encoder(scale, activation_checkpointing=activation_checkpointing).train()
    x = torch.randn(batch, 1, length)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z = model(x)
        z.float().square().mean().backward()

    for _ in range(warmup):
        step()
    times = []
    cpu0 = time.process_time()
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    # CPU seconds (all threads) per step: a fairer figure than wall time on a shared machine.
    cpu = time.process_time() - cpu0
    best, total = min(times), sum(times)
    return {"scale": scale, "batch": batch, "length": length, "iters": iters,
            "samples_per_s": batch * iters / total, "best_samples_per_s": batch / best,
            "s_per_step": total / iters, "samples_per_cpu_s": batch * iters / cpu}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", nargs="+", default=["small", "medium"],
                   choices=["small", "medium", "large"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=5000)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--activation-checkpointing", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"bf16={args.bf16}, activation_checkpointing={args.activation_checkpointing}")
    results = []
    for scale in args.scales:
        r = bench(scale, args.batch, args.length, args.warmup, args.iters,
                  bf16=args.bf16, activation_checkpointing=args.activation_checkpointing)
        results.append(r)
        print(f"{scale:>6}: batch {r['batch']} x 1 x {r['length']}, {r['iters']} steps: "
              f"{r['samples_per_s']:.1f} samples/s fwd+bwd (best step {r['best_samples_per_s']:.1f}, "
              f"{r['s_per_step']:.2f} s/step; {r['samples_per_cpu_s']:.2f} samples per CPU-second)",
              flush=True)
    return results


if __name__ == "__main__":
    main()
