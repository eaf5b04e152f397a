"""Distributed CLEF pretraining: Ray Train + DeepSpeed (see docs/training.md).

`PretrainConfig` (typed config with per-scale presets) and `run_pretraining(cfg)` (the driver)
are the public entry points; `jobs/pretrain.py` is the CLI over them.
"""

from clef_platform.train.config import PRESETS, PretrainConfig

__all__ = ["PRESETS", "PretrainConfig", "run_pretraining"]


def __getattr__(name):
    # Lazy: importing the config must not import Ray.
    if name == "run_pretraining":
        from clef_platform.train.run import run_pretraining

        return run_pretraining
    raise AttributeError(name)
