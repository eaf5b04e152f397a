"""Render the data card of an ingested dataset (`<dataset>/datacard/index.html`) again.

    .venv/bin/python jobs/datacard.py --data out/datasets/ludb
    .venv/bin/python jobs/datacard.py --data s3://bucket/datasets/ludb --examples 5

jobs/ingest.py writes it after every ingest; this is for a dataset ingested before the card
existed, or with other options. Prints the page's URL. Exit 2 when --data is not a committed
dataset (clef_platform/cli.py).
"""

from __future__ import annotations

from clef_platform import cli, logs


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="datacard.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset URL: a folder, file://..., s3://...")
    p.add_argument("--examples", type=cli.nonnegative_int, default=3,
                   help="stored records plotted (default 3)")
    p.add_argument("--example-seconds", type=cli.positive_float, default=10.0,
                   help="seconds plotted of each example (default 10)")
    a = p.parse_args(argv)
    logs.setup("INFO")
    from clef_platform.layout.datacard import DataCardConfig, write_data_card

    print(write_data_card(a.data, DataCardConfig(examples=a.examples,
                                                 example_seconds=a.example_seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.main("datacard", main))
