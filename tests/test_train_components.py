"""The training loop's components alone: plain checkpoint state, digest verification, the
engine's save/load round trip and finite check at every ZeRO stage and on the DDP path, the
checkpointer's fallback to an older checkpoint. Single process (world size 1, gloo)."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from clef_platform.layout import checkpoint as CK
from tests.helpers import free_port


class Planted:
    """A pickle that creates a file when loaded (what a malicious checkpoint would do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant(path: Path, sentinel: Path) -> None:
    torch.save({"module": Planted(sentinel)}, path)


# ---- plain state and verification (no process group) --------------------------------------

def test_plain_state_round_trip(tmp_path):
    state = {"t": torch.arange(3), "s": {3, 1}, "od": OrderedDict(b=1, a=(1.5, None, "x")),
             "np": np.arange(4, dtype=np.uint32), "size": torch.Size([2, 3]),
             "rng": np.random.get_state()}
    CK.save_plain(state, tmp_path / "s.pt")
    raw = torch.load(tmp_path / "s.pt", weights_only=True)    # plain: weights_only reads it
    assert isinstance(raw["s"], dict)
    back = CK.load_plain(tmp_path / "s.pt")
    assert back["s"] == {1, 3} and list(back["od"]) == ["b", "a"] and back["od"]["a"][2] == "x"
    assert torch.equal(back["t"], state["t"]) and back["size"] == torch.Size([2, 3])
    np.testing.assert_array_equal(back["np"], state["np"])
    np.random.set_state(back["rng"])

    class Opaque:
        pass

    with pytest.raises(CK.CheckpointError, match=r"x\.y\[1\]: .*Opaque is not plain state"):
        CK.save_plain({"x": {"y": [1, Opaque()]}}, tmp_path / "o.pt")


def test_planted_pickle_is_refused_and_runs_nothing(tmp_path):
    sentinel = tmp_path / "pwned"
    plant(tmp_path / "p.pt", sentinel)
    with pytest.raises(CK.CheckpointError, match="not plain checkpoint state"):
        CK.load_plain(tmp_path / "p.pt")
    assert not sentinel.exists()


def _folder(root: Path, step: int, world: int = 2) -> Path:
    d = root / f"ckpt{step}"
    (d / "sub").mkdir(parents=True)
    for r in range(world):
        (d / f"f{r}.bin").write_bytes(os.urandom(100 + r))
    (d / "sub" / "g.bin").write_bytes(b"g" * 10)
    CK.write_run_file(d, step=step, world_size=world)
    CK.write_digests(d, 0, [CK.RUN_FILE, "f0.bin", "sub/g.bin"])
    CK.write_digests(d, 1, ["f1.bin"])
    return d


def test_verify_names_what_is_wrong(tmp_path):
    d = _folder(tmp_path, 1)
    assert CK.verify(d)["step"] == 1
    (d / "f1.bin").write_bytes((d / "f1.bin").read_bytes()[:50])
    with pytest.raises(CK.CheckpointError, match=r"f1\.bin has 50 bytes.*truncated"):
        CK.verify(d)
    d = _folder(tmp_path, 2)
    data = bytearray((d / "sub/g.bin").read_bytes())
    data[0] ^= 1
    (d / "sub/g.bin").write_bytes(bytes(data))
    with pytest.raises(CK.CheckpointError, match=r"sub/g\.bin differs from its SHA-256"):
        CK.verify(d)
    d = _folder(tmp_path, 3)
    (d / "f0.bin").unlink()
    with pytest.raises(CK.CheckpointError, match=r"f0\.bin is missing"):
        CK.verify(d)
    d = _folder(tmp_path, 4)
    (d / "extra.pt").write_bytes(b"x")
    with pytest.raises(CK.CheckpointError, match=r"extra\.pt is in no digest list"):
        CK.verify(d)
    d = _folder(tmp_path, 5)
    (d / CK.DIGESTS.format(rank=1)).unlink()
    with pytest.raises(CK.CheckpointError, match="digest list of rank 1 is missing"):
        CK.verify(d)
    with pytest.raises(CK.CheckpointError, match="no such checkpoint folder"):
        CK.verify(tmp_path / "nothing")


# ---- engines (single-process group) --------------------------------------------------------

@pytest.fixture(scope="module")
def process_group():
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def _engine(kind: str, method: str = "moco"):
    from clef_platform.train.engine import EngineConfig, build_engine
    from clef_platform.train.objectives import PretrainModule

    torch.manual_seed(0)
    module = PretrainModule("small", method, moco_queue=16)
    cfg = EngineConfig(deepspeed=kind != "ddp", zero_stage=0 if kind == "ddp" else int(kind[-1]),
                       micro_batch=2, warmup_steps=2, total_steps=10)
    engine = build_engine(cfg, module, torch.device("cpu"), 1)
    engine.module.attach_target(torch.device("cpu"))
    return engine


def _inputs(i: int):
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randn(2, 1, 5000, generator=g)
    return x, x + 0.1 * torch.randn(2, 1, 5000, generator=g)


def _train_step(engine, i: int) -> float:
    with engine.micro(True):
        loss = engine.forward(*_inputs(i))
        engine.backward(loss)
    assert engine.grads_finite()
    engine.step()
    engine.module.after_step()
    return float(loss.detach())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ds0", "ds1", "ds2", "ds3", "ddp"])
def test_engine_round_trip_and_finite_check(process_group, tmp_path, kind):
    from clef_platform.train.checkpointer import Checkpointer, CheckpointerConfig
    from clef_platform.train.data import param_digest

    method = "simclr" if kind == "ds3" else "moco"   # BYOL/MoCo are refused with ZeRO-3
    a = _engine(kind, method)
    ck = Checkpointer(CheckpointerConfig(run_name="unit", total_steps=10), 0, 1)
    for i in range(2):
        _train_step(a, i)
    torch.manual_seed(1234)
    ck.write(tmp_path, a, a.module, 2)
    rng_after_save = torch.rand(3)
    assert CK.verify(tmp_path)["step"] == 2
    pts = sorted(p for p in tmp_path.rglob("*.pt"))
    assert pts
    for p in pts:                                  # every file is plain state
        torch.load(p, weights_only=True)

    b = _engine(kind, method)
    assert ck._load(tmp_path, CK.verify(tmp_path), b, b.module) == 2
    assert torch.equal(torch.rand(3), rng_after_save)      # RNG state restored
    assert b.lr() == a.lr()
    with a.full_params(a.module), b.full_params(b.module):
        assert param_digest(a.module) == param_digest(b.module)
    assert b.module.extra_state().keys() == a.module.extra_state().keys()
    for k, v in a.module.extra_state().get("queue", {}).items():
        assert torch.equal(v, b.module.extra_state()["queue"][k])
    # the next step (optimiser moments, schedule, momentum branch, queue) is the same
    assert _train_step(b, 2) == _train_step(a, 2)
    assert b.lr() == a.lr()
    with a.full_params(a.module), b.full_params(b.module):
        assert param_digest(a.module) == param_digest(b.module)

    # a NaN gradient is seen before the optimiser step
    from clef_platform.train.loop import _nan_hook

    hook = _nan_hook(b.module)
    with b.micro(True):
        loss = b.forward(*_inputs(3))
        b.backward(loss)
    hook.remove()
    assert not b.grads_finite()


@pytest.mark.slow
def test_checkpointer_falls_back_to_an_older_checkpoint(process_group, tmp_path, caplog):
    import ray.train

    from clef_platform.train.checkpointer import Checkpointer, CheckpointerConfig

    engine = _engine("ddp")
    ck = Checkpointer(CheckpointerConfig(run_name="unit", total_steps=10), 0, 1)
    folders = {}
    for step in (1, 2, 3):
        _train_step(engine, step)
        folders[step] = tmp_path / f"checkpoint_{step}"
        folders[step].mkdir()
        ck.write(folders[step], engine, engine.module, step)
    sentinel = tmp_path / "pwned"
    plant(folders[3] / CK.DDP_STATE, sentinel)                       # newest: planted pickle
    (folders[2] / CK.STATE.format(rank=0)).unlink()                  # next: a file deleted
    cands = [ray.train.Checkpoint(str(folders[s])) for s in (3, 2, 1)]
    fresh = _engine("ddp")
    with caplog.at_level("WARNING", logger="clef_platform.train"):
        assert ck.resume(fresh, fresh.module, cands) == 1
    assert not sentinel.exists()
    text = caplog.text
    assert f"skipping checkpoint {folders[3]}" in text and "(truncated or replaced)" in text
    assert f"skipping checkpoint {folders[2]}" in text and "is missing" in text
    # truncated, and nothing else to fall back to: one line naming every checkpoint tried
    f = folders[1] / CK.DDP_STATE
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CK.CheckpointError) as e:
        ck.resume(fresh, fresh.module, cands)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("no checkpoint of run") and "truncated" in msg
    assert all(str(folders[s]) in msg for s in (1, 2, 3))
    assert ck.resume(fresh, fresh.module, []) == 0         # a fresh run: nothing to resume
