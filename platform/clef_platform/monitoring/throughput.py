"""A run's throughput page from the panel definitions (monitoring.panels): each panel's PromQL
queried from Prometheus over the run's time range and drawn as a PNG, or, where no Prometheus
ran, the panels the trainer's own reports cover (Ray's checkpoint record of the run), saying so.
Stored by layout.throughput under `<run>/report/`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clef_platform.layout.throughput import Figure, write_page  # noqa: E402
from clef_platform.monitoring.panels import PANELS, substitute  # noqa: E402
from clef_platform.monitoring.prometheus import query_range  # noqa: E402

log = logging.getLogger(__name__)

# panel title -> the report field of the trainer's reports that draws it without Prometheus
FROM_REPORTS = {"Samples/s (global)": "samples_per_s", "Loss": "loss",
                "Learning rate": "lr", "Gradient norm": "grad_norm"}


@dataclass
class PageConfig:
    run: str                          # run URL <storage>/<run-name>
    prometheus: str = ""              # Prometheus URL; empty = from the trainer's reports
    start: float = 0.0
    end: float = 0.0
    step_s: float = 5.0
    rate_interval: str = "1m"


def _png(title: str, unit: str, series: list[tuple[str, list[float], list[float]]],
         xlabel: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, xs, ys in series:
        ax.plot(xs, ys, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(unit)
    if 1 < len(series) <= 8:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _legend(fmt: str, labels: dict) -> str:
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def from_prometheus(cfg: PageConfig) -> tuple[list[Figure], dict[str, str]]:
    run = cfg.run.rstrip("/").rsplit("/", 1)[-1]
    figures, missing = [], {}
    for p in PANELS:
        series = []
        for q in p.queries:
            expr = substitute(q.expr, run=run, rate_interval=cfg.rate_interval)
            for s in query_range(cfg.prometheus, expr, cfg.start, cfg.end, cfg.step_s):
                pts = [(float(t) - cfg.start, float(v)) for t, v in s["values"]]
                if pts:
                    series.append((_legend(q.legend, s["metric"]), [t for t, _ in pts],
                                   [v for _, v in pts]))
        if series:
            figures.append(Figure(p.title, _png(p.title, p.unit, series,
                                                "seconds since the run's start"), p.unit))
        else:
            missing[p.title] = "no data in Prometheus over the run" + \
                (f" (needs {p.needs})" if p.needs else "")
    return figures, missing


def trainer_reports(run: str) -> list[dict]:
    """The loop's reports in Ray's checkpoint record of the run, by step."""
    from clef_platform.layout.train_snapshot import SNAPSHOT_FILE, loop_reports, parse_snapshot
    from clef_platform.storage import open_store

    raw = open_store(run).get_bytes(SNAPSHOT_FILE)
    return loop_reports(parse_snapshot(raw, f"{run.rstrip('/')}/{SNAPSHOT_FILE}"))


def from_reports(cfg: PageConfig) -> tuple[list[Figure], dict[str, str]]:
    reports = trainer_reports(cfg.run)
    figures, missing = [], {}
    for p in PANELS:
        key = FROM_REPORTS.get(p.title)
        pts = [(r["step"], r[key]) for r in reports if key and isinstance(r.get(key), (int, float))]
        if pts:
            figures.append(Figure(p.title, _png(p.title, p.unit, [(key, [s for s, _ in pts],
                                                                    [v for _, v in pts])],
                                                "training step (checkpoints)"), p.unit))
        else:
            missing[p.title] = "no Prometheus ran; the trainer's reports do not record it"
    return figures, missing


def render_throughput_page(cfg: PageConfig) -> str:
    if cfg.prometheus:
        figures, missing = from_prometheus(cfg)
        source = f"Prometheus at {cfg.prometheus}"
    else:
        figures, missing = from_reports(cfg)
        source = "the trainer's own reports (no Prometheus ran)"
    url = write_page(cfg.run, figures, source, cfg.start, cfg.end, missing)
    log.info("throughput page: %s (%d panels, %d not drawn)", url, len(figures), len(missing))
    return url
