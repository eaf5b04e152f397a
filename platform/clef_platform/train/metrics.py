"""Training metrics: Prometheus gauges per worker, and a progress board the driver reads.

Every worker serves its own registry on 127.0.0.1:<port + rank> (port 0 = no server). Labels
are only `rank` (and `scope` for samples/s): never patient or record ids.

The driver cannot scrape workers on other nodes, so rank 0 also pushes a summary to a tiny
Ray actor (`ProgressBoard`) every `log_every` steps; the driver polls it and logs
one progress line per interval.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import ray
from prometheus_client import CollectorRegistry, Gauge, start_http_server

log = logging.getLogger(__name__)


@dataclass
class TrainMetrics:
    rank: int
    world: int
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r, lab = self.registry, ["rank"]
        self.samples_per_s = Gauge("clef_train_samples_per_second",
                                   "Training samples/s (scope=global: all ranks, from rank 0; "
                                   "scope=worker: this rank)", ["scope", "rank"], registry=r)
        self.step_seconds = Gauge("clef_train_step_seconds", "Wall time of the last optimiser step",
                                  lab, registry=r)
        self.data_wait = Gauge("clef_train_data_wait_seconds",
                               "Time the last step waited for its batch(es)", lab, registry=r)
        self.data_wait_frac = Gauge("clef_train_data_wait_fraction",
                                    "Share of step time spent waiting for data", lab, registry=r)
        self.loss = Gauge("clef_train_loss", "Loss of the last step (global batch)", lab, registry=r)
        self.lr = Gauge("clef_train_learning_rate", "Learning rate of the last step", lab, registry=r)
        self.grad_norm = Gauge("clef_train_grad_norm", "Global gradient norm before clipping",
                               lab, registry=r)
        self.step = Gauge("clef_train_step", "Optimiser steps completed", lab, registry=r)
        self.gpu_mem = Gauge("clef_train_gpu_memory_bytes", "GPU memory (kind=allocated|peak)",
                             ["kind", "rank"], registry=r)
        self.last_ckpt = Gauge("clef_train_last_checkpoint_step", "Step of the last checkpoint",
                               lab, registry=r)
        self._server = None

    def serve(self, base_port: int) -> int | None:
        if not base_port:
            return None
        from clef_platform.netbind import bind_address

        port = base_port + self.rank
        addr = bind_address()          # CLEF_BIND_ADDRESS: 127.0.0.1 unless scraped across hosts
        try:
            self._server, _ = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:  # a port clash must never kill training
            log.warning("rank %d: Prometheus port %d unavailable (%s); metrics not served",
                        self.rank, port, e)
            return None
        log.info("rank %d: Prometheus metrics on http://%s:%d/metrics", self.rank, addr, port)
        return port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def update(self, *, step: int, loss: float, lr: float, grad_norm: float | None,
               step_s: float, wait_s: float, samples: int, device=None) -> None:
        rk = str(self.rank)
        worker_sps = samples / step_s if step_s > 0 else 0.0
        self.samples_per_s.labels("worker", rk).set(worker_sps)
        if self.rank == 0:
            # Every rank takes the same step in lock-step: global rate = world x own rate.
            self.samples_per_s.labels("global", rk).set(worker_sps * self.world)
        self.step_seconds.labels(rk).set(step_s)
        self.data_wait.labels(rk).set(wait_s)
        self.data_wait_frac.labels(rk).set(wait_s / step_s if step_s > 0 else 0.0)
        self.loss.labels(rk).set(loss)
        self.lr.labels(rk).set(lr)
        if grad_norm is not None:
            self.grad_norm.labels(rk).set(grad_norm)
        self.step.labels(rk).set(step)
        if device is not None and getattr(device, "type", "cpu") == "cuda":
            import torch

            self.gpu_mem.labels("allocated", rk).set(torch.cuda.memory_allocated(device))
            self.gpu_mem.labels("peak", rk).set(torch.cuda.max_memory_allocated(device))

    def checkpointed(self, step: int) -> None:
        self.last_ckpt.labels(str(self.rank)).set(step)


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Latest progress of a run (pushed by rank 0, read by the driver)."""

    def __init__(self) -> None:
        self._latest: dict = {}

    def push(self, info: dict) -> None:
        self._latest = info

    def latest(self) -> dict:
        return self._latest


class ProgressLogger:
    """Driver side: poll the board every `interval` s and log one line when something moved."""

    def __init__(self, board, interval: float = 10.0, logger: logging.Logger | None = None):
        self.board, self.interval = board, interval
        self.log = logger or log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._last_step = -1
        self.lines: list[str] = []

    def start(self) -> "ProgressLogger":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        self._emit()

    def _emit(self) -> None:
        try:
            info = ray.get(self.board.latest.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - the board may be gone at shutdown
            return
        if not info or info.get("step", -1) == self._last_step:
            return
        self._last_step = info["step"]
        line = (f"step {info['step']}/{info['steps']} loss {info['loss']:.4f} "
                f"lr {info['lr']:.2e} grad_norm {info.get('grad_norm') or 0:.3f} "
                f"{info['samples_per_s']:.1f} samples/s (global) step {info['step_s']:.3f}s "
                f"data-wait {100 * info['wait_frac']:.1f}% last ckpt {info.get('last_ckpt')}")
        self.lines.append(line)
        self.log.info(line)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._emit()


# ---- the loop's metrics sink -------------------------------------------------------------------

@dataclass
class MetricsSinkConfig:
    port: int = 0                 # Prometheus base port (0 = none)
    log_every: int = 10
    total_steps: int = 200
    global_batch: int = 64        # records per micro-step over all ranks
    grad_accum: int = 1


class MetricsSink:
    """One call per step: Prometheus gauges, rank 0's log line and progress board, and the
    figures `ray.train.report` carries (throughput over the steps after the first)."""

    def __init__(self, cfg: MetricsSinkConfig, rank: int, world: int, board=None):
        self.cfg, self.rank, self.board = cfg, rank, board
        self.gauges = TrainMetrics(rank, world)
        self.gauges.serve(cfg.port)
        self.t_start = time.time()
        self.first_step_s = None      # the first step (compilation, allocator warm-up)
        self.first_step_end = None    # wall clock at its end (time to first step)
        self.steady_s, self.steady_n = 0.0, 0
        self.last_ckpt: int | None = None

    def step(self, *, step: int, loss: float, lr: float, grad_norm: float | None,
             step_s: float, wait_s: float, device=None) -> dict:
        c = self.cfg
        if self.first_step_s is None:
            self.first_step_s, self.first_step_end = step_s, time.time()
        else:
            self.steady_s, self.steady_n = self.steady_s + step_s, self.steady_n + 1
        per_rank = c.global_batch // max(1, self.gauges.world)
        self.gauges.update(step=step, loss=loss, lr=lr, grad_norm=grad_norm, step_s=step_s,
                           wait_s=wait_s, samples=per_rank * c.grad_accum, device=device)
        if self.rank == 0 and (step % c.log_every == 0 or step == c.total_steps or step == 1):
            info = {"step": step, "steps": c.total_steps, "loss": loss, "lr": lr,
                    "grad_norm": grad_norm, "step_s": step_s, "wait_frac": wait_s / step_s,
                    "samples_per_s": c.global_batch * c.grad_accum / step_s,
                    "last_ckpt": self.last_ckpt, "first_step_s": self.first_step_s}
            log.info("step %d/%d loss %.4f lr %.2e grad_norm %s %.1f samples/s data-wait %.0f%%",
                     step, c.total_steps, loss, lr, grad_norm, info["samples_per_s"],
                     100 * wait_s / step_s)
            if self.board is not None:
                self.board.push.remote(info)
        return {"step": step, "loss": loss, "lr": lr,
                "grad_norm": grad_norm if grad_norm is not None else float("nan"),
                "first_step_s": self.first_step_s, "first_step_end_unix": self.first_step_end,
                "train_start_unix": self.t_start,
                # global samples/s averaged over the steps after the first (lock-step ranks)
                "samples_per_s": (c.global_batch * c.grad_accum * self.steady_n / self.steady_s
                                  if self.steady_n else float("nan"))}

    def checkpointed(self, step: int) -> None:
        self.last_ckpt = step
        self.gauges.checkpointed(step)

    def close(self) -> None:
        self.gauges.close()


def build_metrics_sink(cfg: MetricsSinkConfig, rank: int, world: int, board=None) -> MetricsSink:
    return MetricsSink(cfg, rank, world, board)
