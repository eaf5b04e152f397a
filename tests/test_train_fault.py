"""Fault tolerance and resume (real Ray Train, real DeepSpeed ZeRO-1, 2 workers, LUDB):

- a worker SIGKILLed by PID in the step after the step-6 export; just before the kill the
  step-6 checkpoint's model-states file is replaced by a pickle that would create a file when
  loaded. Ray's automatic restore hands the loop that checkpoint: it fails verification, the
  loop falls back to the step-3 checkpoint, replays steps 4-8, and the committed exports of
  steps 3 and 6 stay byte-identical (files and markers);
- a --resume rerun continues the step count, optimiser and schedule; deleting, then
  truncating, the newest checkpoint makes --resume fall back to the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from clef_platform.digests import sha256_file
from clef_platform.train.config import PretrainConfig
from tests.test_train_components import plant

pytestmark = pytest.mark.slow


def events(trace, rank):
    p = Path(trace) / f"rank{rank}_events.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def registered(snapshot: Path) -> dict[int, str]:
    """{step: checkpoint folder name} Ray has registered."""
    try:
        state = json.loads(snapshot.read_text())
    except (OSError, ValueError):
        return {}
    return {r["metrics"].get("step"): r["checkpoint_dir_name"]
            for r in state.get("checkpoint_results", [])}


def export_files(run: Path, step: int) -> dict[str, str]:
    root = run / "exports" / f"step_{step}"
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_sigkilled_worker_falls_back_past_a_planted_checkpoint_then_resume(ludb_train_data,
                                                                           tmp_path, caplog):
    from clef_platform.layout.dataset import open_dataset
    from clef_platform.layout.export import list_exports, read_marker, run_url
    from clef_platform.train.run import find_checkpoints, run_pretraining

    storage, trace = tmp_path / "runs", tmp_path / "trace"
    run = storage / "ft"
    sentinel = tmp_path / "pwned"

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
        # Once Ray has registered the step-6 checkpoint (a checkpoint whose report the
        # controller has not collected yet is lost with the worker), plant the pickle, record
        # the exports' digests, and SIGKILL rank 1's process (it is in step 7).
        deadline = time.monotonic() + 600
        snap = run / "checkpoint_manager_snapshot.json"
        while time.monotonic() < deadline:
            reg = registered(snap)
            if 6 in reg:
                starts = [e for e in events(trace, 1) if e["event"] == "start"]
                plant(run / reg[6] / "step_6" / "mp_rank_00_model_states.pt", sentinel)
                killed["exports"] = {s: export_files(run, s) for s in (3, 6)}
                pid = starts[-1]["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.update(pid=pid, planted=reg[6])
                return
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    with caplog.at_level("WARNING"):
        res = run_pretraining(cfg(8), trace_dir=str(trace), trace_steps=100)
    t.join(timeout=5)
    assert killed, "the worker was never killed"
    assert res.error is None and res.metrics["step"] == 8
    starts = [e for e in events(trace, 1) if e["event"] == "start"]
    assert len(starts) == 2 and starts[0]["pid"] == killed["pid"] != starts[1]["pid"]
    # the replacement group skipped the planted step-6 checkpoint and resumed from step 3
    assert [e["step"] for e in starts] == [0, 3]
    assert not sentinel.exists()
    exports = list_exports(run_url(str(storage), "ft"))
    assert sorted(exports) == [3, 6, 8]
    # the exports committed before the kill are byte-identical (step 6 was replayed)
    assert {s: export_files(run, s) for s in (3, 6)} == killed["exports"]
    m = read_marker(exports[8])
    ds = open_dataset(ludb_train_data["data"])
    assert (m.method, m.scale, m.recipe, m.step) == ("clef", "small", "scaled", 8)
    assert len(m.training_data) == 1
    td = m.training_data[0]
    assert (td.url, td.split, td.dataset_digest, td.records) == (
        os.path.abspath(ludb_train_data["data"]), "train", ds.digest, ds.records("train"))

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
    assert sorted(list_exports(run_url(str(storage), "ft"))) == [3, 6, 8, 9, 10]
    # the LR schedule continued (step 10 of 10 is at the end of the cosine, not in warmup); the
    # peak is the small preset's 1e-3 scaled by sqrt(global batch 8 / reference 128)
    assert cfg(10).optim.lr == pytest.approx(1e-3 * (8 / 128) ** 0.5)
    assert res2.metrics["lr"] == pytest.approx(cfg(10).optim.lr * 0.1, rel=1e-6)

    # Deleting the newest checkpoint (step 10): --resume falls back to the one before (9).
    ckpts = dict(find_checkpoints(cfg(10)))
    shutil.rmtree(ckpts[10])
    res3 = run_pretraining(cfg(11, "--resume"), trace_dir=str(trace))
    assert res3.error is None and res3.metrics["step"] == 11
    assert [e for e in events(trace, 0) if e["event"] == "start"][-1]["step"] == 9
    # Truncating a file of the newest checkpoint (step 11): verification fails, step 9 it is.
    newest = Path(dict(find_checkpoints(cfg(11)))[11])
    f = newest / "clef_state_rank1.pt"
    f.write_bytes(f.read_bytes()[:64])
    res4 = run_pretraining(cfg(11, "--resume"), trace_dir=str(trace))
    assert res4.error is None and res4.metrics["step"] == 11
    assert [e for e in events(trace, 0) if e["event"] == "start"][-1]["step"] == 9
    assert not sentinel.exists()
