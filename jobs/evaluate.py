"""Linear-probe (or fine-tune) evaluation of every export of a training run that has no results yet.

    python jobs/evaluate.py --run out/runs/demo --data-root out/datasets
    python jobs/evaluate.py --run s3://bucket/runs/r1 --data-root s3://bucket/datasets --watch
    python jobs/evaluate.py --run out/runs/demo --protocol fine-tune --workers 2 --tasks ludb_rhythm

--protocol linear-probe (default): scikit-learn probes on frozen embeddings. --protocol
fine-tune: the encoder and a linear head trained per task through Ray Train (the release's
downstream recipe: AdamW lr 1e-3, OneCycle to 1e-2, early stopping on the validation loss,
patience 5; bf16 autocast on GPU, fp32 on CPU). Both store into the same results table, keyed
by protocol.

The records each export trained on (its marker's lineage) are excluded from every probe;
--pretrain-manifest adds more. Exports without lineage and --released checkpoints are scored
only with --allow-no-lineage. Without --watch it makes one pass and exits (cron / Kubernetes CronJob); with --watch it polls
every --interval seconds and evaluates each new export as it appears. Exit status of a single
pass: 0 when every pending task succeeded (or was skipped for too few labels), 1 when some task
failed after its retries (it is retried on the next run) or on an operational failure, 2 on a bad
option, task or file (clef_platform/cli.py). Ray (clef_platform/ray_session.py): --address or
RAY_ADDRESS, else a private local instance on 127.0.0.1 that the job shuts down.
Docs: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from clef_platform import cli, logs


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def released(text: str) -> tuple[str, str]:
    path, sep, scale = text.rpartition(":")
    if not sep or scale not in ("small", "medium", "large"):
        raise argparse.ArgumentTypeError(f"expected PATH:SCALE (scale small|medium|large), "
                                         f"got {text!r}")
    return path, scale


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run URL <storage>/<run-name> (folder or s3://)")
    p.add_argument("--tasks", nargs="*", default=None,
                   help="task names (or YAML paths); default: every shipped task")
    p.add_argument("--tasks-dir", default=None, help="folder of task YAML files "
                   "(default: clef_platform/evaluate/tasks)")
    p.add_argument("--data-root", default=os.environ.get("CLEF_DATA_ROOT", "out/datasets"),
                   help="where task dataset names resolve (default $CLEF_DATA_ROOT or "
                        "out/datasets); tasks whose dataset is absent are skipped")
    p.add_argument("--results", default=None, help="results folder URL, one object per "
                   "result (default <run>/eval/results)")
    p.add_argument("--report", default=None, help="report folder URL (default <run>/eval/report)")
    p.add_argument("--pretrain-manifest", default=None,
                   help="table with a sha256 column of more records to exclude, on top of "
                        "the exports' lineage (e.g. another dataset's manifest.parquet)")
    p.add_argument("--pretrain-split", default=None,
                   help="only rows of this split of --pretrain-manifest (e.g. train)")
    p.add_argument("--released", type=released, action="append", default=[],
                   help="released CLEF checkpoint as baseline, PATH:SCALE (repeatable)")
    p.add_argument("--allow-no-lineage", action="store_true",
                   help="also score exports whose marker names no training data and "
                        "--released checkpoints (the report says leakage was not checked)")
    p.add_argument("--no-verify-records", action="store_true",
                   help="skip the per-record signal SHA-256 check (shard digests are always "
                        "checked)")
    p.add_argument("--no-random-baseline", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="random-baseline seed")
    p.add_argument("--watch", action="store_true", help="keep polling for new exports")
    p.add_argument("--interval", type=cli.positive_float, default=300.0, help="seconds between polls")
    p.add_argument("--max-passes", type=cli.positive_int, default=None, help="stop --watch after N passes")
    p.add_argument("--retries", type=cli.nonnegative_int, default=1, help="retries of a failing task per pass")
    p.add_argument("--actors", type=cli.positive_int, default=None, help="embedding actors (default: CPUs)")
    p.add_argument("--num-cpus", type=cli.positive_float, default=None,
                   help="CPUs of the local Ray instance (ignored under RAY_ADDRESS)")
    p.add_argument("--metrics-port", type=cli.port, default=None,
                   help="serve Prometheus gauges on 127.0.0.1:PORT")
    p.add_argument("--n-bootstrap", type=cli.positive_int, default=1000,
                   help="bootstrap resamples of each metric's interval")
    p.add_argument("--address", default="",
                   help="Ray cluster to join ('auto' = the one `ray start` left on this host); "
                        "default $RAY_ADDRESS, else a private local instance on 127.0.0.1")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--lead", default=None,
                   help="score every task on this lead (I, II, ..., V6) instead of each task's "
                        "own (I unless the task says otherwise; the paper's text says I, the "
                        "release's code uses II); the lead is part of every result's key")
    p.add_argument("--protocol", choices=("linear-probe", "fine-tune"), default="linear-probe",
                   help="linear-probe: probes on frozen embeddings (default); fine-tune: train "
                        "the encoder with a linear head per task (Ray Train); part of the key")
    ft = p.add_argument_group("fine-tune (--protocol fine-tune; defaults: the release's "
                              "configs/exp/ptbxl_downstream.yaml)")
    ft.add_argument("--workers", type=_int, default=1, help="Ray Train workers (DDP); each "
                    "takes a GPU when the cluster has GPUs")
    ft.add_argument("--cpus-per-worker", type=float, default=1.0)
    ft.add_argument("--finetune.lr", dest="ft_lr", type=float, default=1e-3,
                    help="AdamW learning rate (default 1e-3)")
    ft.add_argument("--finetune.max_lr", dest="ft_max_lr", type=float, default=None,
                    help="OneCycleLR peak (default 10 x lr = 1e-2)")
    ft.add_argument("--finetune.weight_decay", dest="ft_wd", type=float, default=1e-5)
    ft.add_argument("--finetune.epochs", dest="ft_epochs", type=_int, default=100,
                    help="maximum epochs per fold (default 100)")
    ft.add_argument("--finetune.patience", dest="ft_patience", type=_int, default=5,
                    help="epochs without a validation-loss improvement before stopping (5)")
    ft.add_argument("--finetune.min_delta", dest="ft_min_delta", type=float, default=1e-3,
                    help="smallest validation-loss drop that counts as an improvement")
    ft.add_argument("--finetune.batch_size", dest="ft_batch", type=_int, default=64,
                    help="global batch, split over --workers (default 64)")
    ft.add_argument("--finetune.folds", dest="ft_folds", type=_int, default=None,
                    help="kfold tasks: fine-tune only the first N outer folds (default all)")
    return p


def finetune_config(a: argparse.Namespace):
    from clef_platform.evaluate.finetune import FineTuneConfig

    cfg = FineTuneConfig(lr=a.ft_lr, max_lr=a.ft_max_lr, weight_decay=a.ft_wd,
                         max_epochs=a.ft_epochs, patience=a.ft_patience,
                         min_delta=a.ft_min_delta, batch_size=a.ft_batch, folds=a.ft_folds,
                         seed=a.seed, workers=a.workers, cpus_per_worker=a.cpus_per_worker)
    cfg.validate()
    return cfg


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logs.setup(a.log_level)
    from clef_platform.evaluate.finetune import FineTuneError
    from clef_platform.evaluate.passes import EvalConfig
    from clef_platform.evaluate.probes import ProbeConfig
    from clef_platform.evaluate.tasks import TASKS_DIR, TaskError, load_tasks, with_lead
    from clef_platform.ray_session import RaySessionConfig, ray_session

    try:
        tasks = with_lead(load_tasks(a.tasks, a.tasks_dir or TASKS_DIR), a.lead)
        finetune = finetune_config(a)       # checked before Ray starts
    except (TaskError, FineTuneError) as e:
        raise cli.UsageError(str(e)) from None
    cfg = EvalConfig(run_url=a.run, tasks=tasks, data_root=a.data_root, results_url=a.results,
                     report_url=a.report, pretrain_manifest=a.pretrain_manifest,
                     pretrain_split=a.pretrain_split, released=a.released,
                     allow_no_lineage=a.allow_no_lineage, verify_records=not a.no_verify_records,
                     random_baseline=not a.no_random_baseline, random_seed=a.seed,
                     probe=ProbeConfig(n_bootstrap=a.n_bootstrap), retries=a.retries,
                     actors=a.actors, protocol=a.protocol, finetune=finetune)
    with ray_session(RaySessionConfig(address=a.address, num_cpus=a.num_cpus,
                                      log_to_driver=False)):
        return _run(a, cfg)


def _run(a, cfg) -> int:
    """One pass (or --watch) inside the job's Ray session."""
    from clef_platform.evaluate.metrics import EvalMetrics
    from clef_platform.evaluate.passes import evaluate_pass
    from clef_platform.evaluate.watch import watch

    metrics = EvalMetrics(run=a.run.rstrip("/").rsplit("/", 1)[-1])
    if a.metrics_port is not None:
        metrics.serve(a.metrics_port)
        logging.info("Prometheus gauges on 127.0.0.1:%d", a.metrics_port)
    if a.watch:
        watch(cfg, a.interval, metrics, max_passes=a.max_passes)
        return 0
    s = evaluate_pass(cfg, metrics)
    print(json.dumps({"exports": s.exports, "added": s.added, "already_stored": s.already,
                      "failed": [list(f) for f in s.failed], "refused": s.refused,
                      "no_lineage": s.no_lineage, "missing_datasets":
                      s.missing_datasets, "report": s.report, "seconds": round(s.seconds, 1)},
                     indent=2))
    if s.failed:
        # The summary above lists every failure; the one line names the first and the count.
        checkpoint, task, error = s.failed[0]
        more = f" (and {len(s.failed) - 1} more)" if len(s.failed) > 1 else ""
        raise cli.Failure(f"{len(s.failed)} task(s) failed, retried on the next pass: "
                          f"{task} of {checkpoint}: {error}{more}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.main("evaluate", main))
