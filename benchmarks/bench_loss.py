"""Benchmark (a): distributed clef_loss vs. a full-matrix implementation, per rank.

    .venv/bin/python benchmarks/bench_loss.py            # global batch 4096, 4 gloo ranks, D=256
    .venv/bin/python benchmarks/bench_loss.py --batch 512 --iters 1   # quick smoke run

Both variants run forward + backward of the CLEF objective, float32, on 4 gloo processes
(one torch thread each), with the global batch split evenly:
- distributed: `clef_loss` as shipped, each rank materialises its [2n_local, 2N] block;
- full-matrix: each rank gathers every embedding (with gradients) and computes the whole
  [2N, 2N] loss itself (what a naive "gather then compute" implementation does).

Peak memory, per rank: the process's resident-set high-water mark (VmHWM) during one
forward+backward, minus its resident set just before (VmRSS), after resetting the mark with
`echo 5 > /proc/self/clear_refs`. torch's CPU allocator hands large blocks straight back to the
OS (glibc mmaps them), so this is the memory the step really needed on top of inputs, model-free
here. Each variant runs in fresh processes so that neither inherits the other's heap. Falls back
to the getrusage ru_maxrss delta (a lower bound) where clear_refs is not available.
Time: wall seconds of forward+backward, the slowest rank per iteration, median over iterations
after the measured-memory one. All 4 ranks share this machine's cores, so times are for this
machine and its load, not a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clean clone

from clef_model import loss as L  # noqa: E402
from clef_model.distributed import Comm, comm_for, gather_rows  # noqa: E402


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _full_matrix_loss(z1, z2, risk, missing, t):
    """Every rank gathers everything and evaluates the whole [2N, 2N] objective."""
    comm = comm_for(z1.shape[0])
    all_z1, all_z2 = gather_rows(z1, comm), gather_rows(z2, comm)
    meta = gather_rows(torch.stack([risk, missing], 1), comm)
    # The full loss is the same on every rank; its gradient reaches each rank's rows summed over
    # ranks (gather backward), i.e. world x dL/dz: the same convention as clef_loss.
    return L._clef(all_z1, all_z2, meta[:, 0], meta[:, 1], t, Comm(0, 1, (comm.total,)))


def _worker(rank, world, port, variant, batch, dim, iters, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = batch // world
    g = torch.Generator().manual_seed(1000 + rank)
    x1, x2 = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
    risk = 0.4 * torch.rand(n, generator=g)
    missing = torch.randint(0, 8, (n,), generator=g).float() / 7
    fn = L.clef_loss if variant == "distributed" else _full_matrix_loss

    peak_kb, times, value = None, [], None
    for it in range(1 + iters):
        z1, z2 = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
        dist.barrier()
        if it == 0:  # memory iteration
            exact = _reset_peak()
            rss0, maxrss0 = _status_kb("VmRSS"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        loss = fn(z1, z2, risk, missing, 0.07)
        loss.backward()
        elapsed = time.perf_counter() - t0
        if it == 0:
            if exact:
                peak_kb = _status_kb("VmHWM") - rss0
            else:
                peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0
            value = loss.item()
        else:
            times.append(elapsed)
        del loss, z1, z2
    (Path(out_dir) / f"{variant}-{rank}.json").write_text(
        json.dumps({"peak_mb": peak_kb / 1024, "times": times, "loss": value, "exact_peak": exact})
    )
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(batch=4096, world=4, dim=256, iters=2) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for variant in ("distributed", "full-matrix"):
            args = (world, _free_port(), variant, batch, dim, iters, out)
            mp.spawn(_worker, args=args, nprocs=world, join=True)
            ranks = [json.loads((Path(out) / f"{variant}-{r}.json").read_text()) for r in range(world)]
            per_iter = [max(r["times"][i] for r in ranks) for i in range(iters)]  # slowest rank
            results[variant] = {
                "peak_mb_max": max(r["peak_mb"] for r in ranks),
                "peak_mb_mean": statistics.mean(r["peak_mb"] for r in ranks),
                "time_s": statistics.median(per_iter),
                "loss": ranks[0]["loss"],
                "exact_peak": all(r["exact_peak"] for r in ranks),
            }
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4096, help="global batch (patients)")
    p.add_argument("--world", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--iters", type=int, default=2, help="timed iterations after the memory one")
    a = p.parse_args(argv)
    B, P = a.batch, a.world
    block = 2 * (B // P) * 2 * B * 4 / 2**20
    print(f"(a) clef_loss forward+backward, global batch {B}, {P} gloo ranks, D={a.dim}, float32")
    print(f"    one float32 logits-sized matrix: [2n_local, 2N] {block:.0f} MiB vs [2N, 2N] {block * P:.0f} MiB")
    res = run(B, P, a.dim, a.iters)
    d, f = res["distributed"], res["full-matrix"]
    how = "VmHWM - VmRSS" if d["exact_peak"] and f["exact_peak"] else "ru_maxrss delta (lower bound)"
    print(f"    {'variant':<12} {'peak MiB/rank (max, mean)':>27} {'fwd+bwd s':>10}   [{how}]")
    for name, r in res.items():
        print(f"    {name:<12} {r['peak_mb_max']:>15.0f} {r['peak_mb_mean']:>11.0f} {r['time_s']:>10.2f}")
    print(f"    ratio full/distributed: memory {f['peak_mb_max'] / d['peak_mb_max']:.2f}x, "
          f"time {f['time_s'] / d['time_s']:.2f}x; |loss difference| {abs(f['loss'] - d['loss']):.2e}")
    return res


if __name__ == "__main__":
    main()
