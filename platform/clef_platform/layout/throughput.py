"""A run's throughput page, `<run>/report/`: `index.html`, one PNG per panel and `page.json`
(where the figures came from, the time range, the panels drawn). Written and read only here.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

from clef_platform.layout.pages import IMAGES_OK_SCRIPT
from clef_platform.storage import open_store

REPORT = "report"


def report_url(run: str) -> str:
    return f"{run.rstrip('/')}/{REPORT}"


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


@dataclass
class Figure:
    title: str
    png: bytes
    unit: str


def write_page(run: str, figures: list[Figure], source: str, start: float, end: float,
               missing: dict[str, str]) -> str:
    """Store the page; `source` says where the figures came from (Prometheus's URL, or the
    trainer's reports), `missing` names each panel not drawn and why. Returns index.html's URL."""
    store = open_store(report_url(run))
    for f in figures:
        store.put_bytes(f"{slug(f.title)}.png", f.png)
    figs = "\n".join(f'<figure><img src="{slug(f.title)}.png" alt="{html.escape(f.title)}">'
                     f"<figcaption>{html.escape(f.title)} ({html.escape(f.unit)})</figcaption>"
                     "</figure>" for f in figures)
    gaps = "".join(f"<li>{html.escape(t)}: {html.escape(why)}</li>" for t, why in missing.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Throughput: {html.escape(run)}</title>
<style>body{{font-family:sans-serif;margin:2em}} figure{{display:inline-block;margin:1em}}
img{{width:560px}}</style></head>
<body><h1>Throughput of {html.escape(run)}</h1>
<p id="source">Figures from {html.escape(source)}, {start:.0f} to {end:.0f} (Unix seconds).</p>
{figs}
{"<h2>Not drawn</h2><ul>" + gaps + "</ul>" if gaps else ""}
{IMAGES_OK_SCRIPT}
</body></html>
"""
    store.put_bytes("index.html", page.encode())
    store.put_bytes("page.json", json.dumps(
        {"source": source, "start": start, "end": end, "panels": [f.title for f in figures],
         "missing": missing}, indent=2).encode())
    return f"{report_url(run)}/index.html"


def read_page_info(run: str) -> dict:
    return json.loads(open_store(report_url(run)).get_bytes("page.json"))
