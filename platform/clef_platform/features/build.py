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


def manifest_coverage(obs: pd.DataFrame, manifest: pd.DataFrame) -> dict:
    """How many of the manifest's patients have any observation from the clinical tables."""
    wanted = set(manifest_patients(manifest))
    clinical = set(obs.loc[obs["source"].astype(str).str.startswith("mimic:"), "patient_id"])
    missing = sorted(wanted - clinical)
    return {"patients": len(wanted), "in_clinical_tables": len(wanted) - len(missing),
            "missing": len(missing), "fraction": (len(wanted) - len(missing)) / len(wanted)
            if wanted else 1.0, "examples": missing[:3]}


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
                        manifest: "pd.DataFrame | None" = None,
                        min_coverage: float = 0.0) -> BuildResult:
    """`manifest_url`: an ingested dataset (root or manifest.parquet) whose records get risk;
    or `manifest`: the same rows as a table (record listings that have no waveforms, such as
    MIMIC-IV-ECG's record_list without its signals). With both tables and a manifest, the
    share of the manifest's patients the clinical tables know is logged (a warning when any are
    missing), put in the summary, and a build under `min_coverage` is refused before anything
    is written."""
    if manifest_url:
        manifest = read_manifest(manifest_url)
    elif manifest is not None:
        manifest = check_manifest(manifest, "table")
    obs, rejects, patients = collect_observations(mimic_hosp, manifest, cfg)
    coverage = manifest_coverage(obs, manifest) if mimic_hosp and manifest is not None else None
    if coverage is not None:
        if coverage["missing"]:
            log.warning("%d of %d manifest patients (%.1f %%) are not in the clinical tables of "
                        "%s, e.g. %s: their risk inputs come from the ECG headers only",
                        coverage["missing"], coverage["patients"],
                        100 * (1 - coverage["fraction"]), mimic_hosp,
                        ", ".join(coverage["examples"]))
        if coverage["fraction"] < min_coverage:
            from clef_platform.cli import UsageError

            raise UsageError(f"--manifest {manifest_url or 'table'}: {coverage['fraction']:.1%} "
                             f"of its {coverage['patients']} patients are in the clinical tables "
                             f"of {mimic_hosp}, below --min-coverage {min_coverage:.1%}; nothing "
                             "was built")
    repo = build_from_observations(repo_dir, obs, cfg, do_materialise)
    from clef_platform.features.client import RiskClient

    client = RiskClient(repo)
    ecg_risk = client.lookup(manifest_keys(manifest)) if manifest is not None else None
    latest = client.online(patients) if do_materialise and patients else None
    summary = build_summary(obs, patients, rejects, ecg_risk, latest)
    if coverage is not None:
        summary["manifest_coverage"] = coverage
    (repo / "data" / "summary.json").write_text(json.dumps(summary, indent=2))
    rejects.frame().to_csv(repo / "data" / "rejects.csv", index=False)
    return BuildResult(repo, obs, rejects, patients, summary)
