"""CLEF encoder, objectives, ECG views and SCORE2 risk (pure PyTorch/NumPy/SciPy).

The public names are resolved lazily so that `import clef_model.risk` stays light.
"""

from importlib import import_module

_EXPORTS = {
    "build_encoder": "clef_model.net1d",
    "EncoderConfig": "clef_model.net1d",
    "SCALES": "clef_model.net1d",
    "load_released_checkpoint": "clef_model.checkpoint",
    "save_encoder": "clef_model.checkpoint",
    "load_encoder": "clef_model.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clef_model' has no attribute {name!r}")
