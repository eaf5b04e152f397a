"""DeepSpeed's checkpoint files as plain state (imported inside workers only: imports deepspeed).

DeepSpeed 0.19.8's default `TorchCheckpointEngine.load` calls `torch.load(weights_only=False)`,
which runs whatever a pickle in the file asks for. Every non-universal read and write of
`save_checkpoint` / `load_checkpoint` goes through `engine.checkpoint_engine` (model states via
state_dict_factory's loader, ZeRO partitions via `_get_all_zero_checkpoint_state_dicts`,
optimizer states, MoE experts), so replacing it covers them all. (The universal-checkpoint
readers in zero/stage3.py call torch.load themselves; the platform never enables them.)

What DeepSpeed puts in its dicts besides tensors and builtins, read from engine.py
`_common_checkpoint_state` / `_save_zero_checkpoint` and stage_1_and_2.py / stage3.py
`state_dict`, and checked by tests/test_train_components.py at every ZeRO stage:
- `loss_scaler`: a `LossScaler` / `DynamicLossScaler` object -> its attributes
- `zero_stage`: a `ZeroStageEnum` -> its int value
- `param_slice_mappings`: `fragment_address` dataclasses -> their two ints
- `ds_config`: a plain dict; `param_shapes`: torch.Size (weights_only reads both)
Each has a codec below; anything else fails the save with the path of the offending value.
"""

from __future__ import annotations

import logging

from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine

from clef_platform.layout import checkpoint as CK

log = logging.getLogger(__name__)


def _register() -> None:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    def scaler_codec(cls):
        def decode(attrs: dict):
            obj = cls.__new__(cls)   # no constructor of the file's choosing: a fixed class
            obj.__dict__.update(attrs)
            return obj
        return lambda o: dict(vars(o)), decode

    for cls in (LossScaler, DynamicLossScaler):
        enc, dec = scaler_codec(cls)
        CK.register_codec(f"deepspeed.{cls.__name__}", cls, enc, dec)
    CK.register_codec("deepspeed.ZeroStageEnum", ZeroStageEnum, lambda e: int(e.value),
                      ZeroStageEnum)
    CK.register_codec("deepspeed.fragment_address", fragment_address,
                      lambda f: {"numel": int(f.numel), "start": int(f.start)},
                      lambda d: fragment_address(numel=d["numel"], start=d["start"]))


_register()


class PlainCheckpointEngine(CheckpointEngine):
    """torch.save of plain state; torch.load(weights_only=True)."""

    def __init__(self, config_params=None):
        super().__init__(config_params)
        self.name = "ClefPlainCheckpointEngine"

    def create(self, info) -> None:
        pass

    def save(self, state_dict, path: str) -> None:
        CK.save_plain(state_dict, path)

    def load(self, path: str, map_location=None):
        return CK.load_plain(path, map_location=map_location)

    def commit(self, info) -> bool:
        return True
