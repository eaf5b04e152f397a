"""Driver side: `run_pretraining(cfg)` starts (or joins) Ray and runs the TorchTrainer.

    from clef_platform.train import PretrainConfig, run_pretraining
    cfg = PretrainConfig.preset("small"); cfg.data.data = "out/ludb"; ...
    result = run_pretraining(cfg)

Before any worker starts, the driver checks the run folder (no silent overwrite of an existing
run without --resume), the shards (fewer shards than readers is an error), fetches the risk table
once with the feature-store client and puts it into Ray's object store.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from clef_platform.train.config import PretrainConfig

log = logging.getLogger("clef_platform.train")


@dataclass
class RunResult:
    run_dir: str
    metrics: dict
    checkpoint_path: str | None
    exports: dict[int, str]
    error: BaseException | None = None
    progress: list[str] = field(default_factory=list)
    seconds: float = 0.0
    restarts: int = 0                      # worker-group restarts (lost workers only)
    fatal: BaseException | None = None     # a rank's error that no restart could heal


def ray_for(cfg: PretrainConfig):
    """The job's Ray (clef_platform.ray_session): the cluster named by --address/RAY_ADDRESS,
    else a private local one on loopback with enough logical CPUs for the workers plus their
    loaders (2-core machines: Ray must not think the workers hold every CPU)."""
    from clef_platform.ray_session import RaySessionConfig, ray_session

    need = cfg.cluster.workers * cfg.cluster.cpus_per_worker + 1
    return ray_session(RaySessionConfig(address=cfg.cluster.address,
                                        num_cpus=max(os.cpu_count() or 1, int(need + 0.999))))


def _fs_and_path(storage: str):
    """(pyarrow filesystem, path) for Ray's storage_path."""
    if storage.startswith("s3://"):
        from clef_platform.storage import S3Store

        s = S3Store(storage)
        return s.arrow_filesystem(), f"{s.bucket}/{s.prefix}".rstrip("/")
    import pyarrow.fs as pafs

    path = urlparse(storage).path if storage.startswith("file://") else storage
    return pafs.LocalFileSystem(), os.path.abspath(path)


def checkpoint_filesystem(storage: str):
    """The pyarrow filesystem Ray Train's checkpoints of `storage` live on."""
    return _fs_and_path(storage)[0]


def find_checkpoints(cfg: PretrainConfig) -> list[tuple[int, str]]:
    return find_checkpoints_in(cfg.checkpoint.storage, cfg.checkpoint.run_name)


def find_checkpoints_in(storage: str, run_name: str) -> list[tuple[int, str]]:
    """[(step, path)] of the run's registered Ray checkpoints, oldest first.

    Ray Train records the checkpoints it has registered in checkpoint_manager_snapshot.json; a
    checkpoint folder that is not in it (its report was lost with a dying worker, or its upload
    was cut short) is ignored. Without a snapshot, folders with a clef_run.json count. Listed
    is not verified: the loop verifies a checkpoint's digests before it loads it.
    """
    import pyarrow.fs as pafs

    from clef_platform.layout.checkpoint import RUN_FILE
    from clef_platform.layout.train_snapshot import SNAPSHOT_FILE, read_snapshot, registered_dirs

    fs, root = _fs_and_path(storage)
    run = posixpath.join(root, run_name)
    snap = read_snapshot(fs, posixpath.join(run, SNAPSHOT_FILE))
    registered = None if snap is None else registered_dirs(snap)
    try:
        infos = fs.get_file_info(pafs.FileSelector(run, allow_not_found=True))
    except FileNotFoundError:
        return []
    out = []
    for info in infos:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        if registered is not None and info.base_name not in registered:
            continue
        try:
            with fs.open_input_stream(posixpath.join(info.path, RUN_FILE)) as f:
                out.append((int(json.loads(f.read())["step"]), info.path))
        except (FileNotFoundError, OSError, KeyError, ValueError, TypeError):
            continue  # incomplete or damaged checkpoint
    return sorted(out)


def drop_missing_checkpoints(storage: str, run_name: str) -> list[str]:
    """Before a --resume: remove from Ray's run snapshot the checkpoints whose folder is gone
    (Ray's controller refuses to start on such a snapshot), so the run falls back to the
    newest one left. Returns the dropped folder names."""
    import pyarrow.fs as pafs

    from clef_platform.layout.train_snapshot import SNAPSHOT_FILE, read_snapshot

    fs, root = _fs_and_path(storage)
    path = posixpath.join(root, run_name, SNAPSHOT_FILE)
    snap = read_snapshot(fs, path)
    if snap is None:
        return []
    results, indices = snap["checkpoint_results"], snap.get("checkpoint_report_indices", [])

    def exists(name: str) -> bool:
        info = fs.get_file_info(posixpath.join(root, run_name, name))
        return info.type == pafs.FileType.Directory

    kept = [(r, i) for r, i in zip(results, indices) if exists(r["checkpoint_dir_name"])]
    dropped = [r["checkpoint_dir_name"] for r in results if not exists(r["checkpoint_dir_name"])]
    latest = snap.get("latest_checkpoint_result") or {}
    if latest.get("checkpoint_dir_name") and not exists(latest["checkpoint_dir_name"]):
        dropped.append(latest["checkpoint_dir_name"])
        latest = max(kept, key=lambda ri: ri[1])[0] if kept else None
    if not dropped:
        return []
    for name in sorted(set(dropped)):
        log.warning("checkpoint %s of run %s is gone; resuming from an older one", name,
                    run_name)
    if latest is None:
        fs.delete_file(path)   # nothing left: Ray starts the run's bookkeeping afresh
        return dropped
    snap.update(checkpoint_results=[r for r, _ in kept],
                checkpoint_report_indices=[i for _, i in kept], latest_checkpoint_result=latest)
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(snap).encode())
    fs.move(tmp, path)
    return dropped


def _throughput_page(run_dir: str, start: float) -> None:
    """The run's throughput page (`<run>/report/`): from the Prometheus named by
    CLEF_PROMETHEUS_URL (jobs/monitor.py prints it) over the run's time range, else from the
    trainer's reports. A page that cannot be drawn is logged; the trained run stands."""
    from clef_platform.monitoring.throughput import PageConfig, render_throughput_page

    try:
        render_throughput_page(PageConfig(run_dir, os.environ.get("CLEF_PROMETHEUS_URL", ""),
                                          start, time.time()))
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        log.warning("throughput page of %s not drawn: %s", run_dir, e)


def run_pretraining(cfg: PretrainConfig, *, risk_client=None, trace_dir: str | None = None,
                    trace_steps: int = 0, progress_interval: float = 10.0,
                    raise_on_error: bool = True, loop_hooks: dict | None = None) -> RunResult:
    """Train `cfg` on Ray; `loop_hooks` are test hooks passed to the loop config (see loop.py)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from clef_platform.layout.export import list_exports, run_url
    from clef_platform.train import data as D
    from clef_platform.train.cluster_net import ClusterTorchConfig
    from clef_platform.train.export import training_lineage
    from clef_platform.train.failures import cannot_heal
    from clef_platform.train.loop import train_loop
    from clef_platform.train.metrics import ProgressBoard, ProgressLogger

    cfg.validate()
    t0 = time.monotonic()
    t0_unix = time.time()
    run_dir = f"{cfg.checkpoint.storage.rstrip('/')}/{cfg.checkpoint.run_name}"

    # ---- the run folder: resume or refuse to overwrite -------------------------------------
    if cfg.checkpoint.resume:
        drop_missing_checkpoints(cfg.checkpoint.storage, cfg.checkpoint.run_name)
    existing = find_checkpoints(cfg)
    exports = list_exports(run_url(cfg.checkpoint.storage, cfg.checkpoint.run_name))
    if (existing or exports) and not cfg.checkpoint.resume:
        raise FileExistsError(
            f"run {run_dir} already has checkpoints (last step "
            f"{existing[-1][0] if existing else max(exports)}); pass --resume to continue it or "
            f"choose another --run-name")
    resume_from = existing[-1][1] if (existing and cfg.checkpoint.resume) else None
    if cfg.checkpoint.resume:
        if resume_from:
            log.info("resuming %s from step %d", run_dir, existing[-1][0])
        else:
            log.warning("--resume: %s has no checkpoint yet; starting from step 0", run_dir)

    # ---- data checks and the risk table (once per job) -------------------------------------
    # Several --data: each dataset is checked and read on its own; an epoch counts their
    # training records together.
    urls = [u for u, _ in cfg.datasets]
    n_records, longest = 0, 0
    for url in urls:
        split_rows = D.read_split_manifest(url, cfg.data.split)
        D.check_readers(cfg, split_rows["shard"].nunique(), url)
        n_records += len(split_rows)
        longest = max(longest, int(split_rows["n_samples"].max()))
    if cfg.data.view_length > longest:
        raise ValueError(f"data.view_length {cfg.data.view_length} is longer than every record "
                         f"of split {cfg.data.split!r} of {', '.join(urls)} (longest: {longest} "
                         "samples)")
    table = D.fetch_risk_tables(urls, cfg.data.split,
                                cfg.data.features if cfg.method == "clef" or risk_client else "",
                                client=risk_client)
    if len(urls) > 1:
        log.info("mixing %d datasets: %s", len(urls), ", ".join(
            f"{u} (weight {w:g})" for u, w in cfg.datasets))
    from clef_platform.train import recipes

    if cfg.data.order == "epoch":
        spe, keep_last = D.epoch_plan(n_records, cfg.global_batch, cfg.cluster.workers)
        log.info("an epoch: %d records in %d steps of global batch %d (last partial batch %s)",
                 n_records, spe, cfg.global_batch, "kept" if keep_last or
                 n_records % cfg.global_batch == 0 else "left out: < 2 records per worker")
    else:
        spe = D.steps_per_epoch(n_records, cfg.global_batch * cfg.optim.grad_accum)
    if cfg.epochs:
        cfg.steps = cfg.epochs * spe      # the loop counts steps; an epoch is `spe` of them
    log.info("%s", recipes.describe(cfg))
    # What the exports' markers name as training data: computed once here, not per worker.
    lineage = training_lineage(cfg)

    with ray_for(cfg):
        table_ref = ray.put(table)
        board = ProgressBoard.remote()
        progress = ProgressLogger(board, interval=progress_interval, logger=log).start()

        fs, storage_path = _fs_and_path(cfg.checkpoint.storage)
        cpus = cfg.cluster.cpus_per_worker
        resources = {"CPU": cpus}
        if cfg.use_gpu:
            resources["GPU"] = cfg.cluster.gpus_per_worker
        def trainer():
            # No retries inside Ray: its policy restarts every failure alike, so the driver
            # restarts the group itself, and only for failures a restart can heal
            # (train/failures.py). Ray restores the latest checkpoint of the named run.
            return TorchTrainer(
                train_loop,
                train_loop_config={"cfg": cfg.to_dict(), "risk_table": table_ref,
                                   "steps_per_epoch": spe, "n_records": n_records,
                                   "progress_board": board, "trace_dir": trace_dir,
                                   "trace_steps": trace_steps, "resume_from": resume_from,
                                   "lineage": lineage, **(loop_hooks or {})},
                scaling_config=ScalingConfig(num_workers=cfg.cluster.workers,
                                             use_gpu=cfg.use_gpu,
                                             resources_per_worker=resources,
                                             placement_strategy=cfg.cluster.placement),
                torch_config=ClusterTorchConfig(socket_ifname=cfg.cluster.socket_ifname),
                run_config=RunConfig(
                    name=cfg.checkpoint.run_name, storage_path=storage_path,
                    storage_filesystem=fs if cfg.checkpoint.storage.startswith("s3://")
                    else None,
                    failure_config=FailureConfig(max_failures=0),
                    checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep)),
            )

        log.info("training %s-%s: %d workers x batch %d (global %d) for %d steps -> %s",
                 cfg.method, cfg.scale, cfg.cluster.workers, cfg.batch_per_worker, cfg.global_batch,
                 cfg.steps, run_dir)
        error, fatal, restarts = None, None, 0
        try:
            while True:
                try:
                    result = trainer().fit()
                    metrics, ckpt = result.metrics or {}, result.checkpoint
                    error = result.error
                except Exception as e:  # noqa: BLE001 - Ray raises TrainingFailedError
                    metrics, ckpt, error = {}, None, e
                if error is None:
                    break
                fatal = cannot_heal(error)
                if fatal is not None:
                    log.error("training failed and a restart cannot heal it, not retried: "
                              "%s: %s", type(fatal).__name__, fatal)
                    break
                if restarts >= cfg.cluster.max_failures:
                    break
                restarts += 1
                log.warning("worker group failed (%s); restart %d of %d from the latest "
                            "checkpoint", type(error).__name__, restarts,
                            cfg.cluster.max_failures)
        finally:
            progress.stop()
            try:
                ray.kill(board)
            except Exception:  # noqa: BLE001
                pass
        out = RunResult(run_dir=run_dir, metrics=metrics,
                        checkpoint_path=ckpt.path if ckpt is not None else None,
                        exports=list_exports(run_url(cfg.checkpoint.storage, cfg.checkpoint.run_name)),
                        error=error, progress=progress.lines, seconds=time.monotonic() - t0,
                        restarts=restarts, fatal=fatal)
    if metrics.get("first_step_end_unix"):
        out.metrics["time_to_first_step_s"] = metrics["first_step_end_unix"] - t0_unix
    if error is None:
        _throughput_page(run_dir, t0_unix)
    if error is not None and raise_on_error:
        raise error
    log.info("done in %.0f s: step %s loss %s; %d exports, last %s", out.seconds,
             metrics.get("step"), metrics.get("loss"), len(out.exports),
             out.exports[max(out.exports)] if out.exports else None)
    return out
