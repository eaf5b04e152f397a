"""Distributed CLEF pretraining (Ray Train + DeepSpeed). `--help` lists every option.

    python jobs/pretrain.py --scale small --method clef --data out/ludb --features out/features \
        --storage out/runs --run-name ludb-small --workers 2 --steps 200
    python jobs/pretrain.py ... --data out/ludb --data out/cinc --data-weights 3,1   # mixed
    ray job submit --working-dir . -- python jobs/pretrain.py --scale large --workers 8 \
        --gpus-per-worker 1 --data s3://bucket/mimic --features /mnt/features --storage s3://bucket/runs ...

Ray: the cluster named by --address or RAY_ADDRESS (set by `ray job submit`), else a private
local instance on 127.0.0.1 that the job shuts down (clef_platform/ray_session.py); it never
joins a running cluster unasked (`--address auto` asks). From Python use
`clef_platform.train.run_pretraining(cfg)`. Values: the scale's preset, then --config YAML, then
the options. Exit status (clef_platform/cli.py): 0 success, 1 training failed, 2 a bad option,
YAML key, dataset or run folder.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    from clef_platform import logs
    from clef_platform.cli import UsageError, write_details
    from clef_platform.train.config import PretrainConfig

    cfg = PretrainConfig.from_args(argv)
    logs.setup("INFO")
    from clef_platform.train.run import run_pretraining

    try:
        result = run_pretraining(cfg, raise_on_error=False)
    except (FileExistsError, FileNotFoundError, ValueError) as e:  # config / data problems
        raise UsageError(str(e)) from None
    summary = {"run_dir": result.run_dir, "step": result.metrics.get("step"),
               "loss": result.metrics.get("loss"), "checkpoint": result.checkpoint_path,
               "exports": {str(k): v for k, v in result.exports.items()},
               "seconds": round(result.seconds, 1), "restarts": result.restarts,
               "error": None if result.error is None else repr(result.error)}
    print(json.dumps(summary, indent=2), flush=True)
    from clef_platform.train.failures import is_user_error

    if result.fatal is not None and is_user_error(result.fatal):
        # A damaged shard, a bad value: exit 2 naming it (first line of a wrapped error).
        raise UsageError(str(result.fatal).strip().splitlines()[-1])
    if result.error is not None:
        path = write_details("pretrain", result.error)
        print(f"pretrain: failed: {type(result.error).__name__}: "
              f"{' '.join(str(result.error).split())[:300]} (details: {path})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from clef_platform.cli import main as cli_main

    raise SystemExit(cli_main("pretrain", main))
