"""The data builder: one rank's micro-batches as training inputs (wraps train/data.py).

`build_data(cfg, rank, world, start_step)` gives an iterator of micro-batches starting at the
first micro-batch of `start_step` (a resumed run continues where it stopped), and `inputs`
turns a batch into (v1, v2, risk, missing) on the device: views come from the DataLoader
workers (`views_on="loader"`) or are made here, batched, on the training device. Shards or
records the loader skipped as damaged (`data.on_damage=skip`) are logged and counted here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from clef_model.views import ViewConfig, make_views

log = logging.getLogger("clef_platform.train")


@dataclass
class DataBuilderConfig:
    pretrain: Any                 # the run's PretrainConfig (data section, batch, accum, seed)
    steps_per_epoch: int = 1
    risk_table: Any = None        # a RiskTable or the ObjectRef the driver put it under
    trace_dir: str | None = None  # test hook: damaged-data events
    n_records: int = 0            # records of the training split (order="epoch")


class Data:
    def __init__(self, cfg: DataBuilderConfig, rank: int, world: int, start_step: int):
        from clef_platform.train import data as D

        p = cfg.pretrain
        self.rank, self.trace_dir, self.step = rank, cfg.trace_dir, start_step
        self.damaged = 0          # shards/records skipped by the loader (data.on_damage=skip)
        self.vcfg = ViewConfig(length=p.data.view_length, seed=p.seed,
                               profile=p.data.view_profile,
                               noise_recordings=noise_recordings(p.data.noise_dir))
        if rank == 0:
            log.info("view profile %s: %s", p.data.view_profile,
                     f"real noise records from {p.data.noise_dir}" if p.data.noise_dir else
                     "the synthetic noise models are used (no --data.noise_dir)")
        table = D.resolve_risk_table(cfg.risk_table)
        self._it = D.make_batches(p, rank, world, table, self.vcfg,
                                  start_micro=start_step * p.optim.grad_accum,
                                  steps_per_epoch=cfg.steps_per_epoch,
                                  n_records=cfg.n_records)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self._it)
        for what in batch.get("damaged", ()):
            self.damaged += 1
            log.warning("rank %d: %s (skipped; %d so far)", self.rank, what, self.damaged)
            if self.trace_dir:
                from clef_platform.train.data import trace_event

                trace_event(self.trace_dir, self.rank, {"event": "damaged", "what": what,
                                                        "micro": batch.get("micro")})
        return batch

    def inputs(self, batch: dict, device):
        if "v1" in batch:   # views made in the DataLoader workers
            v1, v2 = batch["v1"].to(device), batch["v2"].to(device)
        else:
            v1, v2 = make_views(batch["signals"].to(device), batch["lead_mask"].to(device),
                                batch["seeds"].to(device), self.vcfg)
        return v1, v2, batch["risk"].to(device), batch["missing"].to(device)


def noise_recordings(folder: str):
    """The run's real noise (`--data.noise_dir`, layout.noise), or None for the synthetic
    models."""
    if not folder:
        return None
    from clef_platform.layout.noise import read_noise_dir

    return read_noise_dir(folder)


def build_data(cfg: DataBuilderConfig, rank: int, world: int, start_step: int) -> Data:
    return Data(cfg, rank, world, start_step)
