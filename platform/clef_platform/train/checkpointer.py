"""The checkpointer: save, verify, find the newest good checkpoint, resume, export.

Saving (every rank, same step): the engine writes its files into a per-rank temp folder, the
loop's state (step, RNG, BYOL/MoCo momentum branch and queue) goes into
`clef_state_rank<R>.pt`, rank 0 adds `clef_run.json`, and each rank writes the digest list of
its files (clef_platform.layout.checkpoint). `ray.train.report(checkpoint=...)` merges the ranks'
folders into one checkpoint under `<storage>/<run-name>/`. Rank 0 then exports the encoder.

Resuming: the candidates, newest first, are Ray's own restore (`ray.train.get_checkpoint()`,
after a worker failure), the driver's `--resume` pick, and every checkpoint Ray registered for
the run (`run.find_checkpoints`). Each is verified against its digest lists before anything
in it is read; one that fails (deleted, truncated, replaced files) is skipped with a warning
naming it, and all ranks agree on the first one that verifies on every rank. The run fails
with one line only when checkpoints exist and none verifies.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clef_platform.layout import checkpoint as CK

log = logging.getLogger("clef_platform.train")


@dataclass
class CheckpointerConfig:
    storage: str = "out/runs"
    run_name: str = "clef-pretrain"
    every: int = 50
    total_steps: int = 200
    marker: dict = field(default_factory=dict)     # export marker lineage (train.export)
    config: dict = field(default_factory=dict)     # the run's PretrainConfig, for clef_run.json

    @classmethod
    def from_pretrain(cls, cfg, lineage: list[dict]) -> "CheckpointerConfig":
        from clef_platform.train.export import marker_fields

        return cls(storage=cfg.checkpoint.storage, run_name=cfg.checkpoint.run_name,
                   every=cfg.checkpoint.every, total_steps=cfg.steps,
                   marker=marker_fields(cfg, lineage), config=cfg.to_dict())

    @property
    def run_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.run_name}"


def rng_state() -> dict:
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _agree(ok: bool) -> bool:
    """True only if `ok` on every rank (one all-reduce)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return ok
    t = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


class Checkpointer:
    def __init__(self, cfg: CheckpointerConfig, rank: int, world: int):
        self.cfg, self.rank, self.world = cfg, rank, world

    def due(self, step: int) -> bool:
        return step % self.cfg.every == 0 or step == self.cfg.total_steps

    # ---- save -----------------------------------------------------------------------------
    @contextmanager
    def save(self, engine, model, step: int):
        """Write this rank's files of the checkpoint of `step` into a temp folder (yielded, so
        the caller can report it to Ray before it goes away)."""
        with tempfile.TemporaryDirectory(prefix=f"clef-ckpt-r{self.rank}-") as d:
            self.write(Path(d), engine, model, step)
            yield Path(d)

    def write(self, folder: Path, engine, model, step: int) -> None:
        engine.save(folder, step)
        CK.save_plain({"step": step, "rank": self.rank, "extra": model.extra_state(),
                       "rng": rng_state()}, folder / CK.STATE.format(rank=self.rank))
        if self.rank == 0:
            CK.write_run_file(folder, step=step, world_size=self.world,
                              zero_stage=engine.zero_stage, run_dir=self.cfg.run_dir,
                              config=self.cfg.config)
        CK.write_digests(folder, self.rank, CK.files_under(folder))

    # ---- export -----------------------------------------------------------------------------
    def export(self, encoder, step: int, loss: float) -> str:
        """Rank 0: the encoder export of `step` (a replayed step keeps its committed export)."""
        from clef_platform.train.export import export_encoder

        url, created = export_encoder(encoder, self.cfg.storage, self.cfg.run_name, step,
                                      loss=float(loss), **self.cfg.marker)
        if not created:
            log.info("step %d was replayed: its export %s stays as committed", step, url)
        return url

    # ---- resume -----------------------------------------------------------------------------
    def candidates(self, restored=None, resume_from: str | None = None) -> list:
        """Checkpoints to try, newest first: Ray's restore, the --resume pick, then every
        registered checkpoint of the run (Checkpoint objects, deduplicated by path)."""
        import ray.train

        from clef_platform.train.run import checkpoint_filesystem, find_checkpoints_in

        fs = checkpoint_filesystem(self.cfg.storage)
        out, seen = [], set()
        if restored is not None:
            out.append(restored)
            seen.add(restored.path.rstrip("/"))
        more = [p for _, p in reversed(find_checkpoints_in(self.cfg.storage, self.cfg.run_name))]
        if resume_from:
            more.insert(0, resume_from)
        for p in more:
            if p.rstrip("/") not in seen:
                seen.add(p.rstrip("/"))
                out.append(ray.train.Checkpoint(p, filesystem=fs))
        return out

    def resume(self, engine, model, candidates: list) -> int:
        """Load the newest candidate that verifies on every rank; returns its step (0: none)."""
        failures = []
        for ckpt in candidates:
            with contextlib.ExitStack() as stack:
                run, problem = None, None
                try:
                    d = Path(stack.enter_context(ckpt.as_directory()))
                    run = CK.verify(d)
                except CK.CheckpointError as e:
                    problem = str(e)
                except OSError as e:   # a deleted checkpoint folder, an unreachable store
                    problem = f"{type(e).__name__}: {e}"
                if not _agree(problem is None):
                    reason = problem or "it failed verification on another rank"
                    log.warning("rank %d: skipping checkpoint %s: %s", self.rank, ckpt.path,
                                reason)
                    failures.append(f"{ckpt.path} ({reason})")
                    continue
                step = self._load(d, run, engine, model)
                if self.rank == 0:
                    log.info("resumed from checkpoint %s at step %d", ckpt.path, step)
                return step
        if failures:
            raise CK.CheckpointError(f"no checkpoint of run {self.cfg.run_dir} verifies: "
                                     + "; ".join(failures))
        return 0

    def _load(self, d: Path, run: dict, engine, model) -> int:
        if run["world_size"] != self.world:
            raise CK.CheckpointError(f"{d}: written by {run['world_size']} workers, this run has "
                                     f"{self.world} (resume with the same --workers)")
        step = int(run["step"])
        state = CK.load_plain(d / CK.STATE.format(rank=self.rank), map_location="cpu")
        if state["step"] != step:
            raise CK.CheckpointError(f"{d}: rank {self.rank} state is of step {state['step']}, "
                                     f"the checkpoint of step {step}")
        engine.load(d, step)
        model.load_extra_state(state["extra"])
        set_rng_state(state["rng"])
        return step
