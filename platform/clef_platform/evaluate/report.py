"""The per-run HTML report: one PNG per task (metric against training step with its 95 %
interval, one series per protocol and lead, baselines as reference lines with their intervals
as bands) and a table of the latest figures (one row per task, protocol and lead), including how many records were excluded for leakage and which labels were skipped.

Written to `<run>/eval/report/` (index.html + <task>.png) through the object store.
"""

from __future__ import annotations

import html
import io
import json
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clef_platform.evaluate.metrics import baseline_name  # noqa: E402
from clef_platform.storage import LocalStore, open_store  # noqa: E402

log = logging.getLogger(__name__)

NO_LINEAGE = "no lineage: leakage not checked"
_COLORS = ["tab:gray", "tab:orange", "tab:green", "tab:purple", "tab:brown"]


def _plot(task: str, metric: str, ok: pd.DataFrame) -> bytes:
    """Exports against step, one series per (protocol, lead); baselines as reference lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    i = 0
    for j, ((protocol, lead), g) in enumerate(ok.groupby(["protocol", "lead"], sort=True)):
        what = f"{protocol}, lead {lead}"
        e = g[g["kind"] == "export"].sort_values("step")
        if len(e):
            x, v = e["step"].to_numpy(float), e["value"].to_numpy(float)
            lo, hi = e["lower"].to_numpy(float), e["upper"].to_numpy(float)
            ax.errorbar(x, v, yerr=[np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)],
                        fmt="o-" if j == 0 else "s--", capsize=3,
                        label=f"checkpoint (95% CI), {what}")
        base = g[g["kind"] != "export"].sort_values("created_at").groupby("checkpoint").tail(1)
        for _, row in base.iterrows():
            c = _COLORS[i % len(_COLORS)]
            i += 1
            ax.axhline(float(row["value"]), color=c, ls="--", lw=1.2,
                       label=f"{baseline_name(row['checkpoint'])}, {what}")
            ax.axhspan(float(row["lower"]), float(row["upper"]), color=c, alpha=0.12)
    if metric == "auroc":
        ax.axhline(0.5, color="black", lw=0.6, ls=":", label="chance")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric.upper() + (" (lower is better)" if metric == "mae" else ""))
    ax.set_title(task)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _fmt(row) -> str:
    note = f" ({NO_LINEAGE})" if row.get("lineage") == "none" else ""
    if row["status"] != "ok":
        return row["status"] + note
    return f"{row['value']:.3f} [{row['lower']:.3f}, {row['upper']:.3f}]" + note


def render_report(df: pd.DataFrame, report_url: str, tasks=(), run_url: str = "",
                  missing=(), not_scored: dict[str, str] | None = None) -> str:
    """Write index.html and one PNG per task under `report_url`; returns the index URL.
    `not_scored`: {checkpoint: why} of models the pass refused or skipped."""
    store = open_store(report_url)
    names = sorted(set(df["task"]) | {t.name for t in tasks})
    desc = {t.name: t.description for t in tasks}
    leads = {t.name: t.lead for t in tasks}
    rows_html, figs_html = [], []
    if len(df):
        # Rows stored before the lead was recorded: the task's current lead.
        df = df.assign(lead=[r or leads.get(t, "?") for r, t in zip(df["lead"], df["task"])])
    for name in names:
        d = df[df["task"] == name]
        if not len(d):
            why = "dataset not ingested" if name in missing else "no results yet"
            rows_html.append(f"<tr><td>{html.escape(name)}</td><td colspan=8>{why}</td></tr>")
            continue
        metric = d["metric"].iloc[0]
        ok = d[d["status"] == "ok"]
        if len(ok):
            store.put_bytes(f"{name}.png", _plot(name, metric, ok))
            figs_html.append(f'<figure><img src="{html.escape(name)}.png" alt="{html.escape(name)}">'
                             f"<figcaption>{html.escape(desc.get(name, name))}</figcaption></figure>")
        # One table row per protocol and lead: their figures are not comparable.
        for (protocol, lead), g in d.groupby(["protocol", "lead"], sort=True):
            base = g[(g["kind"] != "export") & (g["status"] == "ok")]
            base = base.sort_values("created_at").groupby("checkpoint").tail(1)
            ex = g[g["kind"] == "export"].sort_values(["step", "created_at"])
            latest = ex.iloc[-1] if len(ex) else g.iloc[-1]
            bl = "<br>".join(f"{html.escape(baseline_name(r['checkpoint']))}: {_fmt(r)}"
                             for _, r in base.iterrows()) or "-"
            skipped = json.loads(latest["skipped"] or "{}")
            classes = json.loads(latest["classes"] or "[]")
            rows_html.append(
                "<tr>" + "".join(f"<td>{c}</td>" for c in [
                    html.escape(name), html.escape(f"{protocol}, lead {lead}"),
                    html.escape(metric.upper()),
                    "-" if latest["kind"] != "export" else int(latest["step"]),
                    html.escape(_fmt(latest)), bl, int(latest["n_test"]),
                    int(latest["n_excluded_leakage"]),
                    html.escape(f"{len(classes)} probed; {len(skipped)} skipped"
                                + (": " + ", ".join(sorted(skipped))[:300] if skipped else ""))])
                + "</tr>")
    n_excl = (df.groupby("dataset")["n_excluded_leakage"].max().to_dict() if len(df) else {})
    excl_html = "".join(f"<li>{html.escape(str(k))}: {int(v)} record(s) excluded because the "
                        f"checkpoint was pretrained on them</li>" for k, v in n_excl.items())
    unchecked = sorted(set(df.loc[df["lineage"] == "none", "checkpoint"])) if len(df) else []
    lineage_html = "".join(f"<li><code>{html.escape(c)}</code>: {NO_LINEAGE}</li>"
                           for c in unchecked)
    lineage_html += "".join(f"<li><code>{html.escape(c)}</code>: not scored: {html.escape(w)}"
                            f"</li>" for c, w in sorted((not_scored or {}).items()))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>CLEF downstream evaluation: {html.escape(run_url)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}}
figure{{display:inline-block;margin:8px}}img{{max-width:640px}}</style></head><body>
<h1>Downstream evaluation (linear probes, fine-tuning)</h1>
<p>Run: <code>{html.escape(run_url)}</code> (<a href="../../report/index.html">its throughput
page</a>). Metrics: macro AUROC (higher is better), MAE
(lower is better); intervals are 95% patient-level bootstrap percentile intervals.</p>
<h2>Latest figures</h2>
<table><tr><th>task</th><th>protocol, lead</th><th>metric</th><th>step</th><th>latest checkpoint</th>
<th>baselines</th><th>n scored</th><th>excluded (leakage)</th><th>labels</th></tr>
{''.join(rows_html)}
</table>
<h2>Leakage</h2><ul>{excl_html or '<li>no results yet</li>'}{lineage_html}</ul>
<h2>Metric against training step</h2>
{''.join(figs_html)}
</body></html>
"""
    store.put_bytes("index.html", page.encode("utf-8"))
    url = (str(store.root / "index.html") if isinstance(store, LocalStore)
           else store.full_url("index.html"))
    log.info("report written to %s", url)
    return url
