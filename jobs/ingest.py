"""Ingest one ECG corpus into sharded WebDataset tarballs (local folder or s3://).

    python jobs/ingest.py --corpus ludb --source data/ludb/data --dest out/ludb
    python jobs/ingest.py --corpus-spec my-corpus.yaml --source /data/my-corpus --dest out/mine
    ray job submit -- python jobs/ingest.py --corpus ... --source ... --dest s3://bucket/ludb

Ray (clef_platform/ray_session.py): the cluster named by --address or RAY_ADDRESS (set by
`ray job submit`), else a private local instance on 127.0.0.1 that the job shuts down.
Rerunning the same command after a crash resumes. Exit status (clef_platform/cli.py): 0 when
the record balance holds, 1 otherwise or on an operational failure, 2 on a bad option, an
unknown corpus or a source without records.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from clef_platform import cli, logs

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def byte_size(text: str) -> int:
    """'256MB', '64MiB', '1000000' -> bytes."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 256MB, 64MiB)")
    unit = (m.group(2) or "").lower().rstrip("b")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value < 1024:
        raise argparse.ArgumentTypeError(f"shard size must be at least 1024 bytes: {text!r}")
    return value


def cpus(text: str) -> float:
    v = cli.positive_float(text)
    if v > 64:
        raise argparse.ArgumentTypeError(f"must be in (0, 64]: {text!r}")
    return v


def split_ratios(text: str):
    from clef_platform.ingest.splits import SplitRatios
    try:
        return SplitRatios.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="ingest.py", description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--corpus", help="registered adapter or corpora/ spec name (e.g. ludb, wfdb)")
    which.add_argument("--corpus-spec", type=Path, default=None,
                       help="a corpus spec YAML file (docs/ingestion.md, 'Corpus specs')")
    p.add_argument("--source", required=True,
                   help="corpus folder, or its s3:// URL (each host mirrors it; docs/ingestion.md)")
    p.add_argument("--dest", required=True, help="dataset URL: a folder, file://..., s3://...")
    p.add_argument("--shard-bytes", type=byte_size, default="256MB",
                   help="target shard size (default 256MB)")
    p.add_argument("--split-ratios", type=split_ratios, default="train=0.8,val=0.1,test=0.1",
                   help="patient-level split ratios (default train=0.8,val=0.1,test=0.1)")
    p.add_argument("--workers", type=cli.positive_int, default=2,
                   help="shards written concurrently (default 2)")
    p.add_argument("--cpus-per-worker", type=cpus, default=1.0,
                   help="Ray CPUs reserved per shard task (fractional allowed; default 1)")
    p.add_argument("--metrics-port", type=cli.port, default=None,
                   help="serve Prometheus counters on 127.0.0.1:PORT while running")
    p.add_argument("--address", default="",
                   help="Ray cluster to join ('auto' = the one `ray start` left on this host); "
                        "default $RAY_ADDRESS, else a private local instance on 127.0.0.1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.source.startswith("s3://"):
        cli.existing_dir("--source", Path(args.source))
    from clef_platform.ingest.adapters.registry import available_adapters

    if args.corpus is not None and args.corpus not in available_adapters():
        raise cli.UsageError(f"--corpus {args.corpus!r}: no such adapter; available: "
                             f"{', '.join(available_adapters())}")
    logs.setup(args.log_level)

    from tqdm import tqdm

    from clef_platform.ingest.pipeline import (IngestConfig, ShardResult, default_list_refs,
                                               run_ingest)
    list_refs = default_list_refs
    if args.corpus_spec is not None:
        from clef_platform.ingest.spec import SpecAdapter, SpecError, load_spec

        try:   # checked whole, table columns included, before Ray starts or a record is read
            spec = load_spec(args.corpus_spec, source=None if args.source.startswith("s3://")
                             else Path(args.source))
        except SpecError as e:
            raise cli.UsageError(f"--corpus-spec {e}") from None
        args.corpus = spec.name
        list_refs = lambda _corpus, source: SpecAdapter(spec).list_records(source)  # noqa: E731
    from clef_platform.layout.dataset import DestinationConflict
    from clef_platform.metrics import IngestMetrics, MetricsServer
    from clef_platform.ray_session import RaySessionConfig, ray_session

    cfg = IngestConfig(corpus=args.corpus, source=args.source, dest=args.dest,
                       shard_bytes=args.shard_bytes, split_ratios=args.split_ratios,
                       workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                       # one count per shard: the driver's endpoint, or the tasks through Ray
                       metrics="off" if args.metrics_port is not None else "ray")
    metrics = IngestMetrics(args.corpus)
    server = MetricsServer(metrics.registry, args.metrics_port) \
        if args.metrics_port is not None else None
    bar: tqdm | None = None

    def on_plan(n: int) -> None:
        nonlocal bar
        bar = tqdm(total=n, unit="shard", desc="ingest", disable=args.no_progress)

    def on_shard(r: ShardResult) -> None:
        metrics.shard_done(r.stored, r.reasons, r.nbytes, r.skipped)
        if bar is not None:
            bar.update(1)

    try:
        # Our own bar counts shards; the session turns Ray Data's off.
        with ray_session(RaySessionConfig(address=args.address)):
            summary = run_ingest(cfg, list_refs=list_refs, on_plan=on_plan, on_shard=on_shard)
    except DestinationConflict as e:
        print(f"ingest refused: {e}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
        if server is not None:
            server.stop()
    print(f"ingest {cfg.corpus} -> {cfg.dest}")
    for line in summary.lines():
        print("  " + line)
    print("  " + data_card(cfg.dest))   # after Ray: the card reads only the committed dataset
    return 0 if summary.balanced else 1


def data_card(dest: str) -> str:
    """Write the committed dataset's data card; the summary line saying where it is. A card
    that cannot be written fails the job (exit 1) with one line saying the dataset itself is
    committed and how to render the card again."""
    from clef_platform.layout.datacard import write_data_card
    from clef_platform.layout.errors import DatasetError

    try:
        return f"data card: {write_data_card(dest)}"
    except (OSError, ValueError, DatasetError) as e:
        raise cli.Failure(f"dataset {dest} is committed, but its data card was not written "
                          f"({type(e).__name__}: {e}); render it with jobs/datacard.py "
                          f"--data {dest}") from None


if __name__ == "__main__":
    raise SystemExit(cli.main("ingest", main))
