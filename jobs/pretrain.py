"""Distributed CLEF pretraining (Ray Train + DeepSpeed). `--help` lists every option.

    python jobs/pretrain.py --scale small --method clef --data out/ludb --features out/features \
        --storage out/runs --run-name ludb-small --workers 2 --steps 200
    python jobs/pretrain.py ... --data out/ludb --data out/cinc --data-weights 3,1   # mixed
    ray job submit --working-dir . -- python jobs/pretrain.py --scale large --workers 8 \
        --gpus-per-worker 1 --data s3://bucket/mimic --features /mnt/features --storage s3://bucket/runs ...

Locally it joins a running Ray cluster (RAY_ADDRESS, or the one `ray start` left) or starts its
own; from Python use `clef_platform.train.run_pretraining(cfg)`. Values: the scale's preset, then
--config YAML, then the options. Exit status 0 on success, 1 when training failed.
"""

from __future__ import annotations

import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from clef_platform.train.config import PretrainConfig

    cfg = PretrainConfig.from_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from clef_platform.train.run import run_pretraining

    try:
        result = run_pretraining(cfg, raise_on_error=False)
    except (FileExistsError, ValueError) as e:  # config / data problems: say so, no traceback
        print(f"pretrain: {e}", file=sys.stderr)
        return 2
    summary = {"run_dir": result.run_dir, "step": result.metrics.get("step"),
               "loss": result.metrics.get("loss"), "checkpoint": result.checkpoint_path,
               "exports": {str(k): v for k, v in result.exports.items()},
               "seconds": round(result.seconds, 1),
               "error": None if result.error is None else repr(result.error)}
    print(json.dumps(summary, indent=2), flush=True)
    # Shut Ray down here, not in its atexit hook: a shutdown racing interpreter exit has turned
    # a finished run's exit status into 1.
    import ray

    if ray.is_initialized():
        ray.shutdown()
    return 0 if result.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
