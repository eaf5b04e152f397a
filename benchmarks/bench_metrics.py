"""The cost of the training metrics: CLEF-small steps/s with the metrics sink on and off.

    .venv/bin/python benchmarks/bench_metrics.py --repeats 5 --steps 10 --batch 16

One process, one model; each repeat runs `--steps` training steps (forward of two views,
CLEF-style loss, backward, SGD step) once per arm in alternating order (off, prometheus, ray,
then the order reversed on the next repeat), so drift on a shared machine hits every arm alike.
The sink is the loop's own (train.metrics.MetricsSink: counters, histograms, gauges and MFU per
step). The ray arm records through ray.util.metrics from this driver (a local Ray is started
once, with its metrics agent). Prints mean and spread (standard deviation) of steps/s per arm
and each arm's ratio to off.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import torch


def _run(sink, model, opt, x1, x2, steps: int) -> float:
    t_all = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        z1, z2 = model(x1), model(x2)
        loss = -torch.nn.functional.cosine_similarity(z1, z2).mean()
        loss.backward()
        opt.step()
        if sink is not None:
            sink.step(step=i + 1, loss=float(loss.detach()), lr=0.1, grad_norm=1.0,
                      step_s=time.perf_counter() - t0, wait_s=0.0)
    return steps / (time.perf_counter() - t_all)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=5000)
    p.add_argument("--no-ray", action="store_true", help="leave the ray arm out")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from clef_model.flops import train_step_flops
    from clef_model.net1d import build_encoder
    from clef_platform.train.metrics import MetricsSink, MetricsSinkConfig

    arms = ["off", "prometheus"] + ([] if a.no_ray else ["ray"])
    if not a.no_ray:
        import ray

        from clef_platform.monitoring.ray_local import local_ray_options

        os.environ.setdefault("CLEF_MONITORING", "1")
        ray.init(address="local", num_cpus=1, log_to_driver=False, **local_ray_options())
    torch.manual_seed(0)
    model = build_encoder("small").train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x1, x2 = torch.randn(a.batch, 1, a.length), torch.randn(a.batch, 1, a.length)
    flops = train_step_flops("small", a.length, views=2)
    sinks = {arm: None if arm == "off" else MetricsSink(
        MetricsSinkConfig(backend=arm, log_every=10 ** 9, total_steps=10 ** 9,
                          global_batch=a.batch, run="bench", flops_per_sample=flops,
                          peak_flops=1e11), rank=0, world=1) for arm in arms}
    _run(None, model, opt, x1, x2, 2)                       # warm-up, untimed
    rates = {arm: [] for arm in arms}
    for r in range(a.repeats):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            rates[arm].append(_run(sinks[arm], model, opt, x1, x2, a.steps))
    base = statistics.mean(rates["off"])
    out = {}
    for arm in arms:
        m, sd = statistics.mean(rates[arm]), statistics.stdev(rates[arm]) if a.repeats > 1 else 0.0
        out[arm] = (m, sd)
        print(f"{arm:>10}: {m:.3f} steps/s  (sd {sd:.3f}, {a.repeats} repeats of {a.steps} "
              f"steps, batch {a.batch})  ratio to off {m / base:.4f}")
    for s in sinks.values():
        if s is not None:
            s.close()
    return out


if __name__ == "__main__":
    main()
