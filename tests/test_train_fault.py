"""Fault tolerance and resume: a worker SIGKILLed by PID is replaced and training continues from
the last checkpoint; a --resume rerun continues the step count, optimiser and schedule."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from clef_platform.train.config import PretrainConfig

pytestmark = pytest.mark.slow


def events(trace, rank):
    p = Path(trace) / f"rank{rank}_events.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def registered_steps(snapshot: Path) -> set[int]:
    try:
        state = json.loads(snapshot.read_text())
    except (OSError, ValueError):
        return set()
    return {r["metrics"].get("step") for r in state.get("checkpoint_results", [])}


def test_sigkilled_worker_is_survived_then_resume_continues(ludb_train_data, tmp_path):
    from clef_platform.train.export import list_exports
    from clef_platform.train.run import run_pretraining

    storage, trace = tmp_path / "runs", tmp_path / "trace"

    def cfg(steps, *extra):
        return PretrainConfig.from_args([
            "--scale", "small", "--method", "clef", "--data", ludb_train_data["data"],
            "--features", ludb_train_data["features"], "--storage", str(storage),
            "--run-name", "ft", "--workers", "2", "--batch-per-worker", "4",
            "--cpus-per-worker", "1", "--data.loader_workers", "1", "--zero-stage", "1",
            "--steps", str(steps), "--checkpoint-every", "3", "--max-failures", "2",
            "--optim.warmup_steps", "2", *extra])

    killed: dict = {}

    def killer():
        # Once Ray has registered the step-3 checkpoint (its snapshot names it; a checkpoint
        # whose report the controller has not collected yet is lost with the worker), SIGKILL
        # rank 1's process.
        deadline = time.monotonic() + 600
        snap = storage / "ft" / "checkpoint_manager_snapshot.json"
        while time.monotonic() < deadline:
            if registered_steps(snap) & {3, 6}:
                starts = [e for e in events(trace, 1) if e["event"] == "start"]
                if starts:
                    pid = starts[-1]["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid, at=time.monotonic())
                    return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = run_pretraining(cfg(8), trace_dir=str(trace), trace_steps=100)
    t.join(timeout=5)
    assert killed, "the worker was never killed"
    assert res.error is None and res.metrics["step"] == 8
    starts = [e for e in events(trace, 1) if e["event"] == "start"]
    assert len(starts) == 2 and starts[0]["pid"] == killed["pid"] != starts[1]["pid"]
    # the replacement group restarted from the step-3 checkpoint, not from scratch
    assert starts[1]["step"] in (3, 6)
    assert sorted(list_exports(str(storage), "ft")) == [3, 6, 8]

    # Without --resume an existing run is refused; with it the step count continues.
    with pytest.raises(FileExistsError):
        run_pretraining(cfg(10))
    res2 = run_pretraining(cfg(10, "--resume"), trace_dir=str(trace), trace_steps=100)
    assert res2.error is None and res2.metrics["step"] == 10
    starts0 = [e for e in events(trace, 0) if e["event"] == "start"]
    assert starts0[-1]["step"] == 8
    steps_after = sorted({int(p.name.split("_step")[1].split("_")[0])
                          for p in trace.glob("rank0_step*_micro0.json")})
    assert steps_after == list(range(10))         # 0-based trace names: every step ran
    assert sorted(list_exports(str(storage), "ft")) == [3, 6, 8, 9, 10]
    # the LR schedule continued (step 10 of 10 is at the end of the cosine, not in warmup)
    assert res2.metrics["lr"] == pytest.approx(1e-3 * 0.1, rel=1e-6)
