"""Build the demo corpus: real LUDB signals in the MIMIC-IV-ECG layout, paired ARTIFICIALLY with
the 100 MIMIC-IV demo patients (plumbing, not science; see the README.txt it writes).

    python jobs/make_demo_corpus.py --ludb data/ludb --mimic-hosp data/mimic-iv-demo/hosp \
        --out out/demo/mimic-iv-ecg-demo [--holdout 40]
"""

import argparse
from pathlib import Path

from clef_platform import cli, logs


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="make_demo_corpus.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ludb", type=Path, required=True, help="LUDB root (or its data/ folder)")
    p.add_argument("--mimic-hosp", type=Path, required=True,
                   help="MIMIC-IV demo hosp/ folder (patients.csv.gz, admissions.csv.gz)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--holdout", type=cli.nonnegative_int, default=0,
                   help="LUDB records to leave unassigned, e.g. for probes (default 0)")
    p.add_argument("--seed", default="clef-demo-v1", help="pairing seed (deterministic)")
    a = p.parse_args(argv)
    cli.existing_dir("--ludb", a.ludb)
    cli.existing_dir("--mimic-hosp", a.mimic_hosp)
    logs.setup("INFO")
    from clef_platform.ingest.demo_corpus import MARKER, DemoCorpusConfig, build_demo_corpus

    cfg = DemoCorpusConfig(ludb_dir=a.ludb, mimic_hosp_dir=a.mimic_hosp, out_dir=a.out,
                           holdout=a.holdout, seed=a.seed)
    plan = build_demo_corpus(cfg)
    print(f"{len(plan)} records written to {a.out} ({MARKER}: LUDB signals, MIMIC-IV demo "
          f"patients; plumbing only, see {a.out / 'README.txt'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.main("make_demo_corpus", main))
