"""ETL -> Parquet -> apply -> materialise: the feature store build (jobs/build_features.py).

Idempotent: every run rewrites the view tables from the sources, re-applies the same
definitions (Feast reports no change) and re-materialises the same range (same rows).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clef_platform.features.config import FeatureStoreConfig
from clef_platform.features.manifest import (manifest_keys, manifest_observations,
                                             manifest_patients, read_manifest, check_manifest)
from clef_platform.features.mimic_etl import run_mimic_etl
from clef_platform.features.repo import apply_repo, materialise, write_repo
from clef_platform.features.schema import Rejects, check_observations, empty_observations
from clef_platform.features.summary import build_summary
from clef_platform.features.tables import build_view_tables

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    repo: Path
    observations: pd.DataFrame
    rejects: Rejects
    patients: list[str]
    summary: dict


def collect_observations(mimic_hosp: str | Path | None, manifest: pd.DataFrame | None,
                         cfg: FeatureStoreConfig) -> tuple[pd.DataFrame, Rejects, list[str]]:
    rejects, frames, patients = Rejects(), [empty_observations()], set()
    if mimic_hosp:
        etl = run_mimic_etl(mimic_hosp, cfg.plausibility)
        frames.append(etl.observations)
        rejects.extend(etl.rejects)
        patients.update(etl.patients)
    if manifest is not None:
        obs, _ = manifest_observations(manifest, cfg.plausibility, rejects)
        frames.append(obs)
        patients.update(manifest_patients(manifest))
    return check_observations(pd.concat(frames, ignore_index=True)), rejects, sorted(patients)


def build_from_observations(repo_dir: str | Path, obs: pd.DataFrame,
                            cfg: FeatureStoreConfig, do_materialise: bool = True) -> Path:
    """Tables -> repository -> apply (-> materialise). Also used by tests with built rows."""
    repo = write_repo(repo_dir, cfg, build_view_tables(check_observations(obs)))
    apply_repo(repo)
    if do_materialise:
        materialise(repo)
    return repo


def build_feature_store(repo_dir: str | Path, cfg: FeatureStoreConfig,
                        mimic_hosp: str | Path | None = None,
                        manifest_url: str | None = None,
                        do_materialise: bool = True,
                        manifest: "pd.DataFrame | None" = None) -> BuildResult:
    """`manifest_url`: an ingested dataset (root or manifest.parquet) whose records get risk;
    or `manifest`: the same rows as a table (record listings that have no waveforms, such as
    MIMIC-IV-ECG's record_list without its signals)."""
    if manifest_url:
        manifest = read_manifest(manifest_url)
    elif manifest is not None:
        manifest = check_manifest(manifest, "table")
    obs, rejects, patients = collect_observations(mimic_hosp, manifest, cfg)
    repo = build_from_observations(repo_dir, obs, cfg, do_materialise)
    from clef_platform.features.client import RiskClient

    client = RiskClient(repo)
    ecg_risk = client.lookup(manifest_keys(manifest)) if manifest is not None else None
    latest = client.online(patients) if do_materialise and patients else None
    summary = build_summary(obs, patients, rejects, ecg_risk, latest)
    (repo / "data" / "summary.json").write_text(json.dumps(summary, indent=2))
    rejects.frame().to_csv(repo / "data" / "rejects.csv", index=False)
    return BuildResult(repo, obs, rejects, patients, summary)
