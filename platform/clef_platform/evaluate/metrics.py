"""Prometheus gauges of the latest evaluation figures, and the short names baselines get in
gauges and the report (labels: task, metric, baseline; never record or patient ids)."""

from __future__ import annotations

import time


def baseline_name(checkpoint: str) -> str:
    """A short label for a baseline: random:small:seed0, released:medium:<file name>."""
    if checkpoint.startswith("released:"):
        _, scale, path = checkpoint.split(":", 2)
        return f"released:{scale}:{path.rstrip('/').rsplit('/', 1)[-1]}"
    return checkpoint


class EvalMetrics:
    """Prometheus gauges of the latest figures per task (this registry: --metrics-port), and
    the catalog's evaluation metrics through Ray's metrics pipeline when the evaluator runs in
    Ray (results written, failed passes, latest metric and export step, labelled by run)."""

    def __init__(self, registry=None, run: str = ""):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        import ray

        from clef_platform.monitoring.sink import Sink, SinkConfig, build_sink

        self.run = run
        self.sink = build_sink(SinkConfig("ray")) if ray.is_initialized() else Sink()
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.value = Gauge("clef_eval_metric", "Latest export's probe metric per task",
                           ["task", "metric"], registry=r)
        self.lower = Gauge("clef_eval_metric_lower", "Lower end of its 95% bootstrap interval",
                           ["task", "metric"], registry=r)
        self.upper = Gauge("clef_eval_metric_upper", "Upper end of its 95% bootstrap interval",
                           ["task", "metric"], registry=r)
        self.step = Gauge("clef_eval_latest_step", "Training step of the latest evaluated export",
                          ["task"], registry=r)
        self.baseline = Gauge("clef_eval_baseline_metric", "Baseline probe metric per task",
                              ["task", "metric", "baseline"], registry=r)
        self.failures = Counter("clef_eval_task_failures", "Task evaluations that failed "
                                "after retries", ["task"], registry=r)
        self.last_pass = Gauge("clef_eval_last_pass_timestamp_seconds",
                               "Unix time the last pass finished", registry=r)

    def serve(self, port: int, addr: str | None = None):
        from prometheus_client import start_http_server

        from clef_platform.netbind import bind_address

        addr = addr or bind_address()        # CLEF_BIND_ADDRESS; 127.0.0.1 by default

        return start_http_server(port, addr=addr, registry=self.registry)

    def failed(self, task: str) -> None:
        self.failures.labels(task).inc()

    def result(self, task: str) -> None:
        self.sink.inc("clef_eval_results_total", 1, run=self.run, task=task)

    def pass_done(self, failed: bool) -> None:
        # inc(0) on a pass that went well: the series exists from the first pass on
        self.sink.inc("clef_eval_pass_failures_total", 1 if failed else 0, run=self.run)

    def update(self, df) -> None:
        ok = df[df["status"] == "ok"]
        for task, g in ok[ok["kind"] == "export"].groupby("task"):
            latest = g.sort_values(["step", "created_at"]).iloc[-1]
            self.value.labels(task, latest["metric"]).set(latest["value"])
            self.lower.labels(task, latest["metric"]).set(latest["lower"])
            self.upper.labels(task, latest["metric"]).set(latest["upper"])
            self.step.labels(task).set(int(latest["step"]))
            self.sink.set("clef_eval_metric", float(latest["value"]), run=self.run, task=task,
                          metric=latest["metric"])
            self.sink.set("clef_eval_export_step", int(latest["step"]), run=self.run, task=task)
        for (task, ckpt), g in ok[ok["kind"] != "export"].groupby(["task", "checkpoint"]):
            row = g.sort_values("created_at").iloc[-1]
            self.baseline.labels(task, row["metric"], baseline_name(ckpt)).set(row["value"])
        self.last_pass.set(time.time())
