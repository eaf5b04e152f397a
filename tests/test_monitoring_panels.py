"""The panel definitions and the Grafana files generated from them (no server needed)."""

import json
from pathlib import Path

import pytest
import yaml

from clef_platform.monitoring import grafana
from clef_platform.monitoring.catalog import BY_NAME
from clef_platform.monitoring.panels import PANELS, PanelDef, Query, check_panels, metric_names

ROOT = Path(__file__).resolve().parents[1]


def test_committed_grafana_files_are_generated():
    for rel, text in grafana.files().items():
        assert (ROOT / grafana.ROOT / rel).read_text() == text, \
            f"{rel} is stale: python -m clef_platform.monitoring.grafana --write"


def test_panel_ids_unique_and_every_panel_present():
    ids, titles = [], []
    for rel in (ROOT / grafana.ROOT / "dashboards").glob("clef-*.json"):
        d = json.loads(rel.read_text())
        assert {v["name"] for v in d["templating"]["list"]} >= {"datasource", "SessionName"}
        for p in d["panels"]:
            ids.append(p["id"])
            titles.append(p["title"])
            assert p["targets"] and all(t["expr"] for t in p["targets"])
    assert len(ids) == len(set(ids)) == len(PANELS)
    assert sorted(titles) == sorted(p.title for p in PANELS)


def test_every_platform_metric_in_a_panel_is_in_the_catalog():
    check_panels()
    used = {n for p in PANELS for q in p.queries for n in metric_names(q.expr)}
    base = {n.removesuffix("_bucket").removesuffix("_sum") for n in used if n.startswith("clef_")}
    assert base <= set(BY_NAME)
    with pytest.raises(ValueError, match="metric clef_train_samples_per_second not in the catalog"):
        check_panels((PanelDef("training", "old", (Query("clef_train_samples_per_second", ""),),
                               "none"),))


def test_provisioning_files_point_at_the_dashboards():
    ds = yaml.safe_load((ROOT / grafana.ROOT / "provisioning/datasources/clef-prometheus.yaml")
                        .read_text())
    assert ds["datasources"][0]["url"].startswith("http://127.0.0.1:")
    prov = yaml.safe_load((ROOT / grafana.ROOT / "provisioning/dashboards/clef.yaml").read_text())
    assert prov["providers"][0]["type"] == "file"
