"""Resume on real Ray Train + DeepSpeed (ZeRO 1 and 3) and the DDP path, 2 workers, LUDB:

- every kind of file of the newest checkpoint, replaced by a pickle that would create a file
  when loaded, fails verification and is refused by the plain-state loader (nothing created);
- with one planted, --resume skips that checkpoint and resumes from the previous one, and the
  replayed steps give the uninterrupted run's losses (clef and moco: the queue is state);
- a NaN in one rank's gradients stops the step on every rank before any parameter changes.

Data order is `global` so that a resumed step reads the same records as the uninterrupted
run (the default `stream` order deliberately moves the shard sampler on after a restart).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clef_platform.digests import sha256_file
from clef_platform.layout import checkpoint as CK
from clef_platform.train.config import PretrainConfig
from tests.test_train_components import plant
from tests.test_train_distributed import read_events, read_traces

pytestmark = pytest.mark.slow


def make_cfg(ludb, storage, name, method, steps, *extra):
    return PretrainConfig.from_args([
        "--scale", "small", "--method", method, "--data", ludb["data"],
        *(["--features", ludb["features"]] if method == "clef" else []),
        "--storage", str(storage), "--run-name", name, "--workers", "2",
        "--batch-per-worker", "4", "--cpus-per-worker", "1", "--data.loader_workers", "1",
        "--data.order", "global", "--steps", str(steps), "--checkpoint-every", "2",
        "--optim.warmup_steps", "1", "--max-failures", "0", *extra])


def kind(rel: str) -> str:
    """A file's kind: its name with step and rank numbers taken out."""
    return re.sub(r"\d+", "N", rel)


@pytest.mark.parametrize("name,method,extra", [
    ("zero1", "clef", ["--zero-stage", "1"]),
    ("zero3", "clef", ["--zero-stage", "3"]),
    ("ddp", "clef", ["--no-deepspeed"]),
    ("moco", "moco", ["--zero-stage", "1", "--moco-queue", "24"]),
])
def test_planted_newest_checkpoint_is_skipped_and_resume_matches(ludb_train_data, tmp_path,
                                                                 name, method, extra):
    from clef_platform.layout.export import list_exports, run_url
    from clef_platform.train.run import find_checkpoints, run_pretraining

    storage = tmp_path / "runs"
    cfg = make_cfg(ludb_train_data, storage, name, method, 4, *extra)
    t_full, t_res = tmp_path / "trace_full", tmp_path / "trace_resumed"
    res = run_pretraining(cfg, trace_dir=str(t_full), trace_steps=4)
    assert res.error is None and res.metrics["step"] == 4
    ckpts = dict(find_checkpoints(cfg))
    assert sorted(ckpts) == [2, 4]
    newest = Path(ckpts[4])
    sentinel = tmp_path / "pwned"

    # every kind of .pt file: verification fails, and the loader refuses it even unverified
    files = [str(p.relative_to(newest)) for p in sorted(newest.rglob("*.pt"))]
    kinds = {kind(f) for f in files}
    want = {"ddp": {"clef_ddp_state.pt", "clef_state_rankN.pt"},
            "zero3": {"clef_state_rankN.pt", "step_N/zero_pp_rank_N_mp_rank_N_model_states.pt",
                      "step_N/zero_pp_rank_N_mp_rank_N_optim_states.pt"}}.get(
        name, {"clef_state_rankN.pt", "step_N/mp_rank_N_model_states.pt",
               "step_N/zero_pp_rank_N_mp_rank_N_optim_states.pt"})
    assert kinds == want, kinds
    for rel in files:
        original = (newest / rel).read_bytes()
        plant(newest / rel, sentinel)
        with pytest.raises(CK.CheckpointError, match=re.escape(rel)):
            CK.verify(newest)
        with pytest.raises(CK.CheckpointError, match="not plain checkpoint state"):
            CK.load_plain(newest / rel)
        (newest / rel).write_bytes(original)
    assert CK.verify(newest)["step"] == 4 and not sentinel.exists()

    # one planted for real: --resume skips it, resumes from step 2 and replays steps 3-4
    export4 = {p.name: sha256_file(p) for p in (storage / name / "exports/step_4").rglob("*")
               if p.is_file()}
    plant(newest / files[0], sentinel)
    cfg.checkpoint.resume = True
    res2 = run_pretraining(cfg, trace_dir=str(t_res), trace_steps=4)
    assert res2.error is None and res2.metrics["step"] == 4
    assert not sentinel.exists()
    assert [e["step"] for e in read_events(t_res, 0) if e["event"] == "start"] == [2]
    assert {p.name: sha256_file(p) for p in (storage / name / "exports/step_4").rglob("*")
            if p.is_file()} == export4            # the replayed step kept its export
    assert sorted(list_exports(run_url(str(storage), name))) == [2, 4]

    full = {(t["step"], t["rank"]): t["loss"] for t in read_traces(t_full)}
    resumed = {(t["step"], t["rank"]): t["loss"] for t in read_traces(t_res)}
    assert sorted(resumed) == [(s, r) for s in (2, 3) for r in (0, 1)]
    # Same parameters, optimiser moments, schedule, queue, records and views, and the same
    # reduction order on CPU/gloo: the replayed losses are the uninterrupted ones, bit for bit.
    assert {k: resumed[k] for k in resumed} == {k: full[k] for k in resumed}
    digests = {}
    for trace in (t_full, t_res):
        digests[trace.name] = [e["params_sha256"] for e in read_events(trace, 0)
                               if e["event"] == "checkpoint" and e["step"] == 4]
    assert digests["trace_resumed"] and digests["trace_resumed"][-1] == digests["trace_full"][-1]


@pytest.mark.parametrize("name,extra", [("ds", ["--zero-stage", "2"]), ("ddp", ["--no-deepspeed"])])
def test_nan_gradient_on_one_rank_stops_every_rank_before_the_update(ludb_train_data, tmp_path,
                                                                     name, extra):
    from clef_platform.train.run import find_checkpoints, run_pretraining

    cfg = make_cfg(ludb_train_data, tmp_path / "runs", f"nan-{name}", "clef", 3,
                   "--checkpoint-every", "1", *extra)
    trace = tmp_path / "trace"
    res = run_pretraining(cfg, trace_dir=str(trace), raise_on_error=False,
                          loop_hooks={"nan_grad": {"rank": 1, "step": 1}})
    assert res.error is not None and "non-finite loss or gradients in step 2" in str(res.error)
    for rank in (0, 1):
        ev = read_events(trace, rank)
        after_step1 = [e["params_sha256"] for e in ev if e["event"] == "checkpoint"]
        stopped = [e for e in ev if e["event"] == "nonfinite"]
        # every rank stopped in step 2 (0-based 1) with the parameters of the end of step 1
        assert len(after_step1) == 1 and len(stopped) == 1 and stopped[0]["step"] == 1, ev
        assert stopped[0]["params_sha256"] == after_step1[0]
    assert [s for s, _ in find_checkpoints(cfg)] == [1]
