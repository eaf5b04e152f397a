"""A run's throughput page (`<run>/report/index.html`), from Prometheus over the run's time range
or, without --prometheus, from the trainer's own reports (the page says which).

    .venv/bin/python jobs/report.py --run out/runs/ludb-small --prometheus http://127.0.0.1:9090 \
        --start 1796230000 --end 1796230600
"""

from __future__ import annotations

import logging

from clef_platform import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run URL <storage>/<run-name> (folder or s3://)")
    p.add_argument("--prometheus", default="", help="Prometheus URL (default: none)")
    p.add_argument("--start", type=float, default=0.0, help="Unix seconds (with --prometheus)")
    p.add_argument("--end", type=float, default=0.0, help="Unix seconds (with --prometheus)")
    p.add_argument("--step", type=float, default=5.0, help="query resolution, seconds")
    p.add_argument("--rate-interval", default="1m", help="PromQL rate window")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.prometheus and not 0 < a.start < a.end:
        raise cli.UsageError("--prometheus needs --start < --end (Unix seconds)")
    from clef_platform.layout.checkpoint import CheckpointError
    from clef_platform.monitoring.throughput import PageConfig, render_throughput_page

    try:
        url = render_throughput_page(PageConfig(a.run, a.prometheus, a.start, a.end, a.step,
                                                a.rate_interval))
    except CheckpointError as e:         # the run's stored record is damaged: the input
        raise cli.UsageError(str(e)) from None
    except (FileNotFoundError, OSError, RuntimeError) as e:
        raise cli.Failure(str(e)) from None
    print(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.main("report", main))
