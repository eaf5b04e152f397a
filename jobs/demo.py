"""The README's main job: the whole platform on the bundled real ECGs, end to end.

    python jobs/demo.py [--out out/demo] [--steps 200]

1. build the demo corpus: real LUDB signals laid out as MIMIC-IV-ECG and paired ARTIFICIALLY
   with the 100 MIMIC-IV demo patients (plumbing, not science); 100 LUDB records held out
2. ingest it, and LUDB and the CinC 2021 samples for the probes, into the object store (a folder)
3. build the feature store (Feast, SQLite online store) from the MIMIC-IV demo tables
4. pretrain CLEF-small with 2 Ray Train workers (DeepSpeed over gloo on CPU) and export
5. evaluate every export with linear probes on records the model never trained on (the
   evaluator drops every record of the training split each export's marker names, and those
   of the pretraining manifest given)

Each stage is the same command a user runs (jobs/*.py), started as a subprocess so that the
demo exercises exactly the public entry points; the figures are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from clef_platform import cli, logs

REPO = Path(__file__).resolve().parents[1]
MARKER = ".clef-demo"          # only a folder with this file is ever wiped by --fresh
log = logging.getLogger("demo")


def run_stage(name: str, args: list[str], timings: dict[str, float]) -> str:
    """Runs one job, echoing its output as it comes; returns its standard output."""
    log.info("=== %s: python %s", name, " ".join(args))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    if proc.wait() != 0:
        raise cli.Failure(f"stage {name!r} failed with exit status {proc.returncode}")
    timings[name] = time.perf_counter() - t0
    log.info("=== %s done in %.0f s", name, timings[name])
    return "".join(lines)


def last_json(text: str) -> dict:
    """The JSON summary a job prints last."""
    start = text.rfind("\n{") + 1   # Ray may print worker lines after it: decode just the object
    return json.JSONDecoder().raw_decode(text[start:])[0]


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="demo.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where every stage writes")
    p.add_argument("--steps", type=cli.positive_int, default=200, help="pretraining steps")
    p.add_argument("--batch-per-worker", type=cli.positive_int, default=8)
    p.add_argument("--keep", action="store_true", help="reuse --out instead of starting fresh")
    a = p.parse_args(argv)
    logs.setup("INFO")

    out = a.out.resolve()
    if out.exists() and not a.keep:
        if not (out / MARKER).exists():
            p.error(f"{out} exists and was not made by this demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()

    corpus = out / "corpus" / "mimic-iv-ecg-demo"
    datasets = out / "datasets"
    train_data = datasets / "mimic-iv-ecg-demo"
    features = out / "features"
    runs = out / "runs"
    run_url = runs / "demo"
    hosp = REPO / "data" / "mimic-iv-demo" / "hosp"
    timings: dict[str, float] = {}

    run_stage("1 demo corpus", ["jobs/make_demo_corpus.py", "--ludb", "data/ludb",
                                "--mimic-hosp", str(hosp), "--out", str(corpus), "--holdout", "100"],
              timings)
    # Small shards so that the demo's 160 records still make several shards per split.
    for name, corpus_name, source in [("2a ingest demo corpus", "mimic-iv-ecg", corpus),
                                      ("2b ingest LUDB (probes)", "ludb", REPO / "data" / "ludb"),
                                      ("2c ingest CinC 2021 (probes)", "cinc2021",
                                       REPO / "data" / "cinc2021-sample")]:
        dest = train_data if corpus_name == "mimic-iv-ecg" else datasets / corpus_name
        run_stage(name, ["jobs/ingest.py", "--corpus", corpus_name, "--source", str(source),
                         "--dest", str(dest), "--shard-bytes", "2MB", "--no-progress"], timings)
    run_stage("3 feature store", ["jobs/build_features.py", "--repo", str(features),
                                  "--mimic-hosp", str(hosp),
                                  "--manifest", str(train_data / "manifest.parquet")], timings)
    train_out = run_stage("4 pretrain", ["jobs/pretrain.py", "--address", "local", "--scale", "small", "--method", "clef",
                             "--data", str(train_data), "--features", str(features),
                             "--storage", str(runs), "--run-name", "demo", "--workers", "2",
                             "--batch-per-worker", str(a.batch_per_worker),
                             "--steps", str(a.steps), "--checkpoint-every", str(max(1, a.steps // 2))],
              timings)
    run_stage("5 evaluate", ["jobs/evaluate.py", "--run", str(run_url), "--data-root", str(datasets),
                             "--pretrain-manifest", str(train_data / "manifest.parquet"),
                             "--pretrain-split", "train",
                             "--tasks", "ludb_rhythm", "ludb_sex", "ludb_age", "cinc2021_dx"],
              timings)
    print_figures(out, train_data, run_url, last_json(train_out), timings)
    return 0


def print_figures(out: Path, train_data: Path, run_url: Path, training: dict,
                  timings: dict[str, float]) -> None:
    from clef_platform.layout.dataset import open_dataset, read_quarantine

    dataset = open_dataset(str(train_data))
    manifest = dataset.frame()
    quarantined = read_quarantine(dataset.store).num_rows
    # Set off from the stages' log lines above: blank lines and a full-width rule on each side.
    rule = "=" * 100
    print(f"\n\n{rule}\n  clef-platform demo: FIGURES\n{rule}")
    print(f"demo corpus: {len(manifest)} records stored, {quarantined} quarantined; "
          f"splits {manifest['split'].value_counts().to_dict()}; dataset digest "
          f"{dataset.digest[:16]}")
    print("NOTE: the demo corpus pairs LUDB signals with MIMIC-IV demo patients ARTIFICIALLY "
          "(plumbing, not science).")
    from clef_platform.layout.export import list_exports

    exports = list_exports(str(run_url))   # committed exports only (those with a marker)
    print(f"exports: {[f'step_{s}' for s in exports]}")
    print(f"training: step {training['step']}, final loss {training['loss']:.4f}, "
          f"{training['seconds']:.0f} s, checkpoint {training['checkpoint']}")
    from clef_platform.layout.results import ResultsStore, results_url

    table = ResultsStore(results_url(str(run_url))).read()
    print("linear probes (95 % bootstrap intervals; records the model trained on are excluded):")
    print(table[["kind", "step", "task", "metric", "value", "lower", "upper", "n_records",
                 "n_excluded_leakage"]].to_string(index=False, float_format="%.3f"))
    report = run_url / "eval" / "report" / "index.html"
    print(f"report: {report if report.exists() else '(none)'}")
    print("stage seconds:", {k: round(v) for k, v in timings.items()})
    print(f"everything is under {out}")
    print(rule, flush=True)


if __name__ == "__main__":
    raise SystemExit(cli.main("demo", main))
