"""Training metrics: the catalog's counters, histograms and gauges per worker (through Ray's
metrics pipeline, or a prometheus_client registry on 127.0.0.1:<port + rank> when a port is
given), and a progress board the driver reads. Labels are `run` and `rank`: never patient or
record ids.

The driver cannot scrape workers on other nodes, so rank 0 also pushes a summary to a tiny
Ray actor (`ProgressBoard`) every `log_every` steps; the driver polls it and logs
one progress line per interval.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import ray

log = logging.getLogger(__name__)


@dataclass
class TrainMetrics:
    """One rank's catalog metrics (monitoring.catalog) through a sink: Ray's metrics pipeline in
    a Train worker, or a prometheus_client registry served on <port + rank> (--metrics-port).

    Throughput is counters (samples, views, steps, FLOP) that Prometheus rates over any window;
    MFU is this rank's training FLOP/s over `peak_flops`, a measured peak (0 = not reported).
    """

    rank: int
    world: int
    run: str = ""
    backend: str = "auto"         # monitoring.sink backends; auto = prometheus if a port is given
    port: int = 0
    flops_per_sample: float = 0.0  # training FLOP of one record (all its views, 3 x forward)
    views_per_sample: int = 2
    peak_flops: float = 0.0

    def __post_init__(self) -> None:
        from clef_platform.monitoring.sink import SinkConfig, build_sink

        backend = self.backend
        if backend == "auto":
            backend = "prometheus" if self.port else "ray"
        port = self.port + self.rank if backend == "prometheus" and self.port else None
        try:
            self.sink = build_sink(SinkConfig(backend, port))
        except OSError as e:  # a port clash must never kill training
            log.warning("rank %d: Prometheus port %s unavailable (%s); metrics not served",
                        self.rank, port, e)
            self.sink = build_sink(SinkConfig(backend, None))
        self.labels = {"run": self.run, "rank": str(self.rank)}

    @property
    def registry(self):
        return getattr(self.sink, "registry", None)

    def close(self) -> None:
        self.sink.close()

    def update(self, *, step: int, loss: float, lr: float, grad_norm: float | None,
               step_s: float, wait_s: float, samples: int, device=None) -> None:
        s, lab = self.sink, self.labels
        s.inc("clef_train_samples_total", samples, **lab)
        s.inc("clef_train_views_total", samples * self.views_per_sample, **lab)
        s.inc("clef_train_steps_total", 1, **lab)
        flops = samples * self.flops_per_sample
        if flops:
            s.inc("clef_train_flops_total", flops, **lab)
            if self.peak_flops > 0 and step_s > 0:
                s.set("clef_train_model_flops_utilisation", flops / step_s / self.peak_flops,
                      **lab)
        s.observe("clef_train_step_seconds", step_s, **lab)
        s.observe("clef_train_data_wait_seconds", wait_s, **lab)
        s.set("clef_train_loss", loss, **lab)
        s.set("clef_train_loss_nonfinite", 0, **lab)
        s.set("clef_train_learning_rate", lr, **lab)
        if grad_norm is not None:
            s.set("clef_train_grad_norm", grad_norm, **lab)
        s.set("clef_train_last_step_timestamp_seconds", time.time(), **lab)
        if device is not None and getattr(device, "type", "cpu") == "cuda":
            import torch

            s.set("clef_train_gpu_memory_bytes", torch.cuda.memory_allocated(device),
                  kind="allocated", **lab)
            s.set("clef_train_gpu_memory_bytes", torch.cuda.max_memory_allocated(device),
                  kind="peak", **lab)

    def nonfinite(self, loss: float) -> None:
        """The step's loss was not finite: the alert's flag (and the loss, which only a
        prometheus_client endpoint carries: Ray's pipeline drops non-finite values)."""
        self.sink.set("clef_train_loss_nonfinite", 1, **self.labels)
        self.sink.set("clef_train_loss", loss, **self.labels)

    def checkpointed(self, step: int) -> None:
        self.sink.set("clef_train_last_checkpoint_step", step, **self.labels)


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
    run: str = ""
    backend: str = "auto"         # monitoring.sink: auto = prometheus if port else ray; off
    flops_per_sample: float = 0.0  # training FLOP per record (clef_model.flops)
    peak_flops: float = 0.0       # measured peak FLOP/s of one worker (0 = no MFU)
    nonfinite_hold_s: float = 15.0  # a non-finite loss stays published this long (the alert)


class MetricsSink:
    """One call per step: Prometheus gauges, rank 0's log line and progress board, and the
    figures `ray.train.report` carries (throughput over the steps after the first)."""

    def __init__(self, cfg: MetricsSinkConfig, rank: int, world: int, board=None):
        self.cfg, self.rank, self.board = cfg, rank, board
        self.gauges = TrainMetrics(rank, world, run=cfg.run, backend=cfg.backend, port=cfg.port,
                                   flops_per_sample=cfg.flops_per_sample,
                                   peak_flops=cfg.peak_flops)
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

    def nonfinite(self, step: int, loss: float | None) -> None:
        """Some rank's loss was not finite in `step`: publish this rank's (None: this rank's
        was finite) and keep the worker alive `nonfinite_hold_s`. A run that failed at once
        would take the value down with its workers before Ray's metrics report and the next
        scrape, and the loss-not-finite alert would never see it."""
        if loss is not None:
            self.gauges.nonfinite(loss)
        hold = self.cfg.nonfinite_hold_s if self.gauges.sink.backend != "off" else 0.0
        if hold > 0:
            log.warning("rank %d: a loss was not finite in step %d (this rank's: %s); kept on "
                        "the metrics for %.0f s before the run fails", self.rank, step, loss, hold)
            time.sleep(hold)

    def checkpointed(self, step: int) -> None:
        self.last_ckpt = step
        self.gauges.checkpointed(step)

    def close(self) -> None:
        self.gauges.close()


def build_metrics_sink(cfg: MetricsSinkConfig, rank: int, world: int, board=None) -> MetricsSink:
    return MetricsSink(cfg, rank, world, board)
