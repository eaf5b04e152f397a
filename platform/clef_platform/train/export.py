"""Encoder exports: `<storage>/<run-name>/exports/step_<N>/` that evaluators read (no DeepSpeed).

Local storage: `clef_model.save_encoder` writes a temporary sibling folder and renames it into
place, so a reader sees no export or a whole one. S3 has no rename: the files are uploaded
under the final prefix first and a `_COMPLETE` marker object is written last; readers list
only exports that have their marker (`list_exports`). Local exports get the marker too, so
readers use one rule for both.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from clef_model import save_encoder
from clef_platform.storage import LocalStore, open_store

MARKER = "_COMPLETE"
_STEP_RE = re.compile(r"^exports/step_(\d+)/" + MARKER + "$")


def export_key(run_name: str, step: int) -> str:
    return f"{run_name}/exports/step_{step:d}"


def export_encoder(module, storage: str, run_name: str, step: int, extra: dict | None = None) -> str:
    """Write the encoder of `module` (a Net1D, possibly wrapped) for `step`; returns its URL."""
    store = open_store(storage)
    prefix = export_key(run_name, step)
    info = json.dumps({"step": step, "run_name": run_name, **(extra or {})}, sort_keys=True)
    if isinstance(store, LocalStore):
        dest = store.root / prefix
        # save_encoder writes a temp sibling and renames it into place (atomic); then the marker.
        save_encoder(module, dest, overwrite=True)
        store.put_bytes(f"{prefix}/{MARKER}", info.encode())
        return str(dest)
    with tempfile.TemporaryDirectory(prefix="clef-export-") as tmp:
        local = save_encoder(module, Path(tmp) / "export")
        for f in sorted(local.iterdir()):
            store.put_file(f"{prefix}/{f.name}", f)
    store.put_bytes(f"{prefix}/{MARKER}", info.encode())  # last: commits the export
    return store.full_url(prefix)


def list_exports(storage: str, run_name: str) -> dict[int, str]:
    """{step: URL} of the complete exports of a run."""
    store = open_store(storage)
    out = {}
    for key in store.list(f"{run_name}/exports/"):
        m = _STEP_RE.match(key[len(run_name) + 1:])
        if m:
            step = int(m.group(1))
            out[step] = (str(store.root / export_key(run_name, step)) if isinstance(store, LocalStore)
                         else store.full_url(export_key(run_name, step)))
    return dict(sorted(out.items()))
