"""Build the demo corpus: real LUDB signals in the MIMIC-IV-ECG layout, paired ARTIFICIALLY with
the 100 MIMIC-IV demo patients (plumbing, not science; see the README.txt it writes).

    python jobs/make_demo_corpus.py --ludb data/ludb --mimic-hosp data/mimic-iv-demo/hosp \
        --out out/demo/mimic-iv-ecg-demo [--holdout 40]

`--out s3://bucket/corpora/mimic-iv-ecg-demo` builds it in a temporary folder and uploads it, so
that `jobs/ingest.py --source` of that URL reads it on any host of a cluster.
"""

import argparse
import tempfile
from pathlib import Path

from clef_platform import cli, logs


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="make_demo_corpus.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ludb", type=Path, required=True, help="LUDB root (or its data/ folder)")
    p.add_argument("--mimic-hosp", type=Path, required=True,
                   help="MIMIC-IV demo hosp/ folder (patients.csv.gz, admissions.csv.gz)")
    p.add_argument("--out", required=True, help="output folder (created), or an s3:// URL")
    p.add_argument("--holdout", type=cli.nonnegative_int, default=0,
                   help="LUDB records to leave unassigned, e.g. for probes (default 0)")
    p.add_argument("--seed", default="clef-demo-v1", help="pairing seed (deterministic)")
    a = p.parse_args(argv)
    cli.existing_dir("--ludb", a.ludb)
    cli.existing_dir("--mimic-hosp", a.mimic_hosp)
    logs.setup("INFO")
    from clef_platform.ingest.demo_corpus import MARKER

    if a.out.startswith("s3://"):
        from clef_platform.mirror import upload_tree

        with tempfile.TemporaryDirectory(prefix="clef-demo-corpus-") as tmp:
            plan = _build(a, Path(tmp) / "corpus")
            upload_tree(Path(tmp) / "corpus", a.out)
    else:
        plan = _build(a, Path(a.out))
    print(f"{len(plan)} records written to {a.out} ({MARKER}: LUDB signals, MIMIC-IV demo "
          f"patients; plumbing only, see its README.txt)")
    return 0


def _build(a: argparse.Namespace, out: Path):
    from clef_platform.ingest.demo_corpus import DemoCorpusConfig, build_demo_corpus

    return build_demo_corpus(DemoCorpusConfig(ludb_dir=a.ludb, mimic_hosp_dir=a.mimic_hosp,
                                              out_dir=out, holdout=a.holdout, seed=a.seed))


if __name__ == "__main__":
    raise SystemExit(cli.main("make_demo_corpus", main))
