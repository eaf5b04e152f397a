"""The panels, defined once (title, PromQL, unit): the Grafana dashboards in infra/grafana/ are
generated from them (monitoring.grafana) and the test queries every one against a real run.

PromQL may use the dashboard variables `$run` (the catalog's run label), `$SessionName` (Ray's
label on its own metrics, as Ray's generated dashboards filter) and Grafana's
`$__rate_interval`; `substitute` fills them in for a query outside Grafana.

`needs` names what a panel's data needs beyond a CPU pretraining and an ingest ("gpu", "eval":
an evaluation pass), so a check on a run without it says so instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass

from clef_platform.monitoring.catalog import BY_NAME


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelDef:
    dashboard: str           # training | ingest | evaluation | cluster
    title: str
    queries: tuple[Query, ...]
    unit: str                # a Grafana unit id (https://grafana.com/docs/grafana/latest/panels-visualizations/configure-standard-options/#unit)
    needs: str = ""


R = '{run=~"$run"}'
RI = "[$__rate_interval]"
RAY = 'SessionName=~"$SessionName"'


def _q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


def _quantiles(metric: str) -> tuple[Query, ...]:
    return tuple(_q(f"histogram_quantile({q}, sum by (run, le) (rate({metric}_bucket{R}{RI})))",
                    f"{{{{run}}}} p{int(q * 100)}") for q in (0.5, 0.9, 0.99))


PANELS: tuple[PanelDef, ...] = (
    # ---- training throughput
    PanelDef("training", "Samples/s (global)", (
        _q(f"sum by (run) (rate(clef_train_samples_total{R}{RI}))", "{{run}}"),), "cps"),
    PanelDef("training", "Samples/s per rank", (
        _q(f"sum by (run, rank) (rate(clef_train_samples_total{R}{RI}))", "{{run}} rank {{rank}}"),),
        "cps"),
    PanelDef("training", "Steps/s", (
        _q(f"max by (run) (rate(clef_train_steps_total{R}{RI}))", "{{run}}"),), "cps"),
    PanelDef("training", "Step time", _quantiles("clef_train_step_seconds"), "s"),
    PanelDef("training", "Data-wait share of step time", (
        _q(f"sum by (run) (rate(clef_train_data_wait_seconds_sum{R}{RI})) / "
           f"sum by (run) (rate(clef_train_step_seconds_sum{R}{RI}))", "{{run}}"),), "percentunit"),
    PanelDef("training", "Training FLOP/s", (
        _q(f"sum by (run) (rate(clef_train_flops_total{R}{RI}))", "{{run}}"),), "flops"),
    PanelDef("training", "Model FLOP utilisation", (
        _q(f"avg by (run) (clef_train_model_flops_utilisation{R})", "{{run}}"),), "percentunit"),
    PanelDef("training", "Loss", (_q(f"max by (run) (clef_train_loss{R})", "{{run}}"),), "none"),
    PanelDef("training", "Learning rate", (
        _q(f"max by (run) (clef_train_learning_rate{R})", "{{run}}"),), "none"),
    PanelDef("training", "Gradient norm", (
        _q(f"max by (run) (clef_train_grad_norm{R})", "{{run}}"),), "none"),
    PanelDef("training", "Last checkpoint step", (
        _q(f"max by (run) (clef_train_last_checkpoint_step{R})", "{{run}}"),), "none"),
    PanelDef("training", "GPU memory", (
        _q(f'max by (run, rank) (clef_train_gpu_memory_bytes{{run=~"$run", kind="allocated"}})',
           "{{run}} rank {{rank}} allocated"),
        _q(f'max by (run, rank) (clef_train_gpu_memory_bytes{{run=~"$run", kind="peak"}})',
           "{{run}} rank {{rank}} peak")), "bytes", needs="gpu"),
    # ---- ingest
    PanelDef("ingest", "Records/s by outcome", (
        _q(f"sum by (corpus, outcome) (rate(clef_ingest_records_total{RI}))",
           "{{corpus}} {{outcome}}"),), "cps"),
    PanelDef("ingest", "Shard bytes/s", (
        _q(f"sum by (corpus) (rate(clef_ingest_bytes_total{RI}))", "{{corpus}}"),), "Bps"),
    PanelDef("ingest", "Quarantined by reason", (
        _q(f"sum by (corpus, reason) (increase(clef_ingest_quarantined_total{RI}))",
           "{{corpus}} {{reason}}"),), "none"),
    PanelDef("ingest", "Ray Data operator rows/s", (
        _q(f"sum by (operator) (rate(ray_data_output_rows{{{RAY}}}{RI}))", "{{operator}}"),),
        "cps"),
    # ---- evaluation
    PanelDef("evaluation", "Latest probe metric per task", (
        _q(f"max by (run, task, metric) (clef_eval_metric{R})", "{{task}} {{metric}}"),),
        "none", needs="eval"),
    PanelDef("evaluation", "Export step of the latest result", (
        _q(f"max by (run, task) (clef_eval_export_step{R})", "{{task}}"),), "none", needs="eval"),
    PanelDef("evaluation", "Probe results written", (
        _q(f"sum by (run, task) (increase(clef_eval_results_total{R}{RI}))", "{{task}}"),),
        "none", needs="eval"),
    # ---- cluster (Ray's own node metrics)
    PanelDef("cluster", "Node CPU utilisation", (
        _q(f"avg by (instance) (ray_node_cpu_utilization{{{RAY}}}) / 100", "{{instance}}"),),
        "percentunit"),
    PanelDef("cluster", "Node memory used", (
        _q(f"sum by (instance) (ray_node_mem_used{{{RAY}}})", "{{instance}}"),), "bytes"),
    PanelDef("cluster", "GPU utilisation", (
        _q(f"avg by (instance, GpuIndex) (ray_node_gpus_utilization{{{RAY}}}) / 100",
           "{{instance}} GPU {{GpuIndex}}"),), "percentunit", needs="gpu"),
)

DASHBOARDS = {"training": "CLEF training throughput", "ingest": "CLEF ingest",
              "evaluation": "CLEF evaluation", "cluster": "CLEF cluster"}


def metric_names(expr: str) -> set[str]:
    """The clef_* / ray_* series an expression reads (for the catalog and scrape checks)."""
    import re

    names = set(re.findall(r"\b((?:clef|ray)_[a-z0-9_]+)", expr))
    return names


def check_panels(panels: tuple[PanelDef, ...] = PANELS) -> None:
    """Raise ValueError naming the first panel that names a platform metric not in the catalog
    or a dashboard that does not exist."""
    for p in panels:
        if p.dashboard not in DASHBOARDS:
            raise ValueError(f"panel {p.title!r}: dashboard {p.dashboard!r} not in {list(DASHBOARDS)}")
        for q in p.queries:
            for name in metric_names(q.expr):
                base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
                if name.startswith("clef_") and base not in BY_NAME and name not in BY_NAME:
                    raise ValueError(f"panel {p.title!r}: metric {name} not in the catalog")


def substitute(expr: str, run: str = ".*", rate_interval: str = "1m",
               session: str = ".*") -> str:
    """The expression as Prometheus takes it outside Grafana (the throughput page, the tests)."""
    return (expr.replace("$__rate_interval", rate_interval).replace("$run", run)
            .replace("$SessionName", session))
