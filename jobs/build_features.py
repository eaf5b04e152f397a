"""Build the CLEF feature store: MIMIC hosp ETL + manifest demographics -> Feast repo.

    .venv/bin/python jobs/build_features.py --mimic-hosp data/mimic-iv-demo/hosp \
        --manifest out/manifest.parquet --repo out/features

Idempotent; prints a summary (also written to <repo>/data/summary.json, rejects.csv).
`--repo s3://bucket/features` builds in a temporary folder and publishes the repository there,
for a cluster whose hosts share no disk (`--features s3://bucket/features` in pretraining).
Afterwards `cd <repo> && feast feature-views list` etc. work as usual.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))            # clef_model
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # clef_platform

from clef_platform import cli, logs  # noqa: E402
from clef_platform.features.config import VIEWS, FeatureStoreConfig  # noqa: E402
from clef_platform.features.repo import ttl_from_days  # noqa: E402


@dataclass(frozen=True)
class Args:
    repo: str
    mimic_hosp: Path | None
    manifest: str | None
    online_store: str
    redis_connection: str | None
    region: str
    ttl_days: dict[str, float]
    no_materialise: bool
    min_coverage: float


def parse_args(argv: list[str] | None = None) -> Args:
    p = cli.ArgumentParser(prog="build_features.py", description=__doc__.split("\n")[1])
    p.add_argument("--repo", required=True,
                   help="feature repository directory, or an s3:// URL to publish it to")
    p.add_argument("--mimic-hosp", type=Path, default=None,
                   help="MIMIC-IV hosp folder (patients, admissions, omr, labevents, "
                        "diagnoses_icd); optional")
    p.add_argument("--manifest", type=str, default=None,
                   help="an ingested dataset whose records get risk: its folder or URL (path, "
                        "file:// or s3://), or its manifest.parquet")
    p.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite")
    p.add_argument("--redis-connection", default=None,
                   help="host:port (default: $CLEF_REDIS_CONNECTION)")
    p.add_argument("--region", default="moderate",
                   help="SCORE2 risk region: low, moderate, high, very high")
    p.add_argument("--min-coverage", type=fraction, default=0.0,
                   help="refuse the build when fewer than this fraction of the manifest's "
                        "patients are in the clinical tables (0-1; default 0: warn only)")
    defaults = FeatureStoreConfig().ttl
    for view in VIEWS:
        p.add_argument(f"--ttl-{view}-days", type=cli.nonnegative_float,
                       default=defaults[view].total_seconds() / 86400,
                       help=f"lookback of {view} in days (0 = unlimited)")
    p.add_argument("--no-materialise", action="store_true")
    ns = p.parse_args(argv)
    if ns.mimic_hosp is None and ns.manifest is None:
        p.error("give --mimic-hosp and/or --manifest")
    if ns.mimic_hosp is not None:
        cli.existing_dir("--mimic-hosp", ns.mimic_hosp)
    return Args(ns.repo, ns.mimic_hosp, ns.manifest, ns.online_store, ns.redis_connection,
                ns.region, {v: getattr(ns, f"ttl_{v}_days") for v in VIEWS}, ns.no_materialise,
                ns.min_coverage)


def fraction(text: str) -> float:
    value = cli.nonnegative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup("INFO", quiet=("feast",))   # feast: registry-refresh chatter
    logs.register_secret(args.redis_connection)
    try:
        cfg = FeatureStoreConfig(ttl=ttl_from_days(args.ttl_days), online_store=args.online_store,
                                 redis_connection=args.redis_connection, region=args.region)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    from clef_platform.features.build import build_feature_store
    from clef_platform.features.summary import format_summary

    if args.repo.startswith("s3://"):
        import tempfile

        from clef_platform.features.repo import publish_repo

        with tempfile.TemporaryDirectory(prefix="clef-features-") as tmp:
            result = build_feature_store(Path(tmp) / "repo", cfg, args.mimic_hosp, args.manifest,
                                         do_materialise=not args.no_materialise,
                                         min_coverage=args.min_coverage)
            publish_repo(result.repo, args.repo)
        where = args.repo
    else:
        result = build_feature_store(Path(args.repo), cfg, args.mimic_hosp, args.manifest,
                                     do_materialise=not args.no_materialise,
                                     min_coverage=args.min_coverage)
        where = str(result.repo)
    print(format_summary(result.summary))
    print(f"feature repository: {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.main("build_features", main))
