"""The demo corpus: real LUDB signals laid out as MIMIC-IV-ECG and paired with the 100
MIMIC-IV demo patients.

THE PAIRING IS ARTIFICIAL. No MIMIC-IV-ECG waveforms can be shipped, so LUDB's real signals are
assigned to MIMIC-IV demo patients deterministically, each ECG time placed inside one of that
patient's admissions (MIMIC dates are shifted into 2110-2210, and an ECG outside a patient's
timeline would find no features). It exercises the plumbing (adapter, ingest, feature joins)
end to end; no clinical or scientific conclusion can be drawn from it.

Output (byte-for-byte deterministic for the same inputs and config):
    files/pNNNN/pSUBJECT/sSTUDY/STUDY.hea/.dat  WFDB, MIMIC lead order, LUDB's own samples and gains, base date/time
    record_list.csv                              subject_id,study_id,file_name,ecg_time,path
    pairing.csv                                  study_id -> ludb_record, hadm_id (provenance)
    heldout_ludb.txt                             LUDB records deliberately left unassigned
    README.txt                                   says all of the above, in words
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clef_model.leads import lead_index

log = logging.getLogger(__name__)

# MIMIC-IV-ECG's own lead order (aVF before aVL) and calibration: the corpus must look like it.
MIMIC_LEAD_ORDER = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
STUDY_ID_BASE = 49_000_000    # study_id = base + LUDB record number: traceable, 8 digits
MARKER = "ARTIFICIAL PAIRING"
WARNING = ("ARTIFICIAL PAIRING FOR PLUMBING, NOT SCIENCE: real LUDB ECG signals assigned to "
           "MIMIC-IV demo patients deterministically; the ECG does not belong to the patient.")


@dataclass(frozen=True)
class DemoCorpusConfig:
    ludb_dir: Path                # LUDB root (contains data/N.hea) or its data/ folder
    mimic_hosp_dir: Path          # MIMIC-IV demo hosp/ (patients.csv.gz, admissions.csv.gz)
    out_dir: Path
    holdout: int = 0              # LUDB records left unassigned (e.g. for probes later)
    seed: str = "clef-demo-v1"    # changes the pairing, deterministically


@dataclass(frozen=True)
class Assignment:
    ludb_record: str
    subject_id: int
    hadm_id: int
    study_id: int
    ecg_time: dt.datetime


def build_demo_corpus(cfg: DemoCorpusConfig) -> list[Assignment]:
    log.warning("demo corpus: %s", WARNING)
    records = _ludb_records(cfg.ludb_dir)
    assigned, heldout = _split_holdout(records, cfg)
    admissions = _admissions(cfg.mimic_hosp_dir)
    plan = plan_assignments(assigned, admissions, cfg.seed)
    out = _prepare_out(cfg.out_dir)
    for a in plan:
        _write_record(a, _ludb_path(cfg.ludb_dir, a.ludb_record), out)
    _write_tables(plan, heldout, out, cfg)
    log.info("demo corpus: %d LUDB records -> %d MIMIC-IV demo patients in %s (%d held out); %s",
             len(plan), len({a.subject_id for a in plan}), out, len(heldout), MARKER)
    return plan


def plan_assignments(records: list[str], admissions: dict[int, list[tuple[int, dt.datetime,
                                                                           dt.datetime]]],
                     seed: str) -> list[Assignment]:
    """Records in a seeded hash order, dealt round-robin to the sorted subjects; each ECG time
    a hash-chosen second inside a hash-chosen admission of its subject."""
    subjects = sorted(admissions)
    if not subjects:
        raise ValueError("no MIMIC-IV demo admissions to place ECGs in")
    ordered = sorted(records, key=lambda r: _hash(seed, "order", r))
    plan = []
    for k, rec in enumerate(ordered):
        subject = subjects[k % len(subjects)]
        stays = admissions[subject]
        hadm_id, admit, disch = stays[_hash(seed, "stay", rec) % len(stays)]
        span = int((disch - admit).total_seconds())
        offset = _hash(seed, "time", rec) % (span + 1) if span > 0 else 0
        plan.append(Assignment(ludb_record=rec, subject_id=subject, hadm_id=hadm_id,
                               study_id=STUDY_ID_BASE + int(rec),
                               ecg_time=admit + dt.timedelta(seconds=offset)))
    return sorted(plan, key=lambda a: (a.subject_id, a.ecg_time, a.study_id))


def _hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big")


def _ludb_data_dir(ludb_dir: Path) -> Path:
    return ludb_dir / "data" if (ludb_dir / "data").is_dir() else ludb_dir


def _ludb_path(ludb_dir: Path, record: str) -> Path:
    return _ludb_data_dir(ludb_dir) / record


def _ludb_records(ludb_dir: Path) -> list[str]:
    data = _ludb_data_dir(Path(ludb_dir))
    # LUDB record names are integers; anything else is not LUDB and would not make a study id.
    recs = sorted((p.stem for p in data.glob("*.hea") if p.stem.isdigit()), key=int)
    if not recs:
        raise FileNotFoundError(f"no LUDB records (N.hea) in {data}")
    return recs


def _split_holdout(records: list[str], cfg: DemoCorpusConfig) -> tuple[list[str], list[str]]:
    if not 0 <= cfg.holdout < len(records):
        raise ValueError(f"holdout must be in [0, {len(records)}), got {cfg.holdout}")
    by_hash = sorted(records, key=lambda r: _hash(cfg.seed, "holdout", r))
    held = sorted(by_hash[: cfg.holdout], key=int)
    held_set = set(held)
    return [r for r in records if r not in held_set], held


def _admissions(hosp: Path) -> dict[int, list[tuple[int, dt.datetime, dt.datetime]]]:
    from clef_platform.source_tables import read_csv

    cols = ["subject_id", "hadm_id", "admittime", "dischtime"]
    adm = read_csv(Path(hosp) / "admissions.csv.gz", cols, usecols=cols)
    patients = set(read_csv(Path(hosp) / "patients.csv.gz", ["subject_id"], usecols=["subject_id"])
                   ["subject_id"].astype(int))
    out: dict[int, list[tuple[int, dt.datetime, dt.datetime]]] = {}
    for row in adm.sort_values(["subject_id", "admittime", "hadm_id"]).itertuples(index=False):
        admit, disch = dt.datetime.fromisoformat(row.admittime), dt.datetime.fromisoformat(row.dischtime)
        if int(row.subject_id) in patients and disch >= admit:
            out.setdefault(int(row.subject_id), []).append((int(row.hadm_id), admit, disch))
    missing = patients - set(out)
    if missing:
        log.warning("demo corpus: %d demo patients have no usable admission and get no ECG",
                    len(missing))
    return out


def _prepare_out(out: Path) -> Path:
    """A fresh output folder; an earlier demo build is replaced, anything else refused."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        readme = out / "README.txt"
        if not (readme.is_file() and MARKER in readme.read_text(errors="replace")):
            raise FileExistsError(f"{out} is not empty and is not a demo corpus; refusing to "
                                  "overwrite it")
        shutil.rmtree(out / "files", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_record(a: Assignment, ludb_record: Path, out: Path) -> None:
    import wfdb

    src = wfdb.rdrecord(str(ludb_record), physical=False)
    cols = {lead_index(n): i for i, n in enumerate(src.sig_name)}
    order = [cols[lead_index(name)] for name in MIMIC_LEAD_ORDER]
    # LUDB's own samples, gains and baselines, only reordered: lossless, so the canonical
    # signal (and its SHA-256) equals that of the same record ingested from LUDB itself, and
    # the evaluators' leakage check recognises it across corpora.
    digital = src.d_signal[:, order].astype(np.int16)
    sid, study = str(a.subject_id), str(a.study_id)
    folder = out / "files" / f"p{sid[:4]}" / f"p{sid}" / f"s{study}"
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(study, fs=500, units=["mV"] * 12, sig_name=list(MIMIC_LEAD_ORDER),
                d_signal=digital, fmt=["16"] * 12,
                adc_gain=[float(src.adc_gain[i]) for i in order],
                baseline=[int(src.baseline[i]) for i in order], base_time=a.ecg_time.time(), base_date=a.ecg_time.date(),
                comments=[f"<subject_id>: {sid}",
                          f"{MARKER}: LUDB record {a.ludb_record} signal, not this patient's ECG"],
                write_dir=str(folder))


def _write_tables(plan: list[Assignment], heldout: list[str], out: Path,
                  cfg: DemoCorpusConfig) -> None:
    with open(out / "record_list.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["subject_id", "study_id", "file_name", "ecg_time", "path"])
        for a in plan:
            sid, study = str(a.subject_id), str(a.study_id)
            w.writerow([sid, study, study, a.ecg_time.strftime("%Y-%m-%d %H:%M:%S"),
                        f"files/p{sid[:4]}/p{sid}/s{study}/{study}"])
    with open(out / "pairing.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["study_id", "subject_id", "hadm_id", "ludb_record", "artificial"])
        for a in plan:
            w.writerow([a.study_id, a.subject_id, a.hadm_id, a.ludb_record, "true"])
    (out / "heldout_ludb.txt").write_text("".join(f"{r}\n" for r in heldout), encoding="utf-8")
    (out / "README.txt").write_text(
        f"{WARNING}\n\n"
        f"This folder is laid out like MIMIC-IV-ECG v1.0 (files/pNNNN/pSUBJECT/sSTUDY/, WFDB 16-bit,\n"
        f"lead order {', '.join(MIMIC_LEAD_ORDER)}, base date and time in\n"
        f"the header, record_list.csv). Signals: {len(plan)} records of the Lobachevsky University\n"
        f"ECG Database (LUDB v1.0.1, ODC-By 1.0, Kalyakulina et al., PhysioNet 2021), copied\n"
        f"sample for sample with LUDB's gains. Patients and times: the 100 MIMIC-IV Clinical Database Demo v2.2\n"
        f"patients (ODbL, Johnson et al., PhysioNet); each ECG time is a second inside one of that\n"
        f"patient's admissions (admittime..dischtime of admissions.csv.gz).\n\n"
        f"The signal-patient pairing is {MARKER}: chosen by hashing with seed {cfg.seed!r},\n"
        f"not observed. It exists to test plumbing (ingest, manifest, feature-store joins); do not\n"
        f"draw clinical or scientific conclusions from it. pairing.csv gives each study's LUDB\n"
        f"record and admission; heldout_ludb.txt lists {len(heldout)} LUDB records left unassigned.\n"
        f"study_id = {STUDY_ID_BASE} + LUDB record number.\n",
        encoding="utf-8")
