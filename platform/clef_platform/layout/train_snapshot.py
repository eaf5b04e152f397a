"""Ray Train's own record of a run (`<run>/checkpoint_manager_snapshot.json`): which checkpoint
folders it registered, with the metrics the loop reported beside each. Ray Train writes it; the
platform only reads it, here: the checkpoint search (train.run), the resume repair and the
throughput page drawn without Prometheus (monitoring.throughput).

A snapshot that exists but cannot be read is an error naming it: read as "no snapshot" it would
silently turn the registered-checkpoint filter off and let a half-written folder in.
"""

from __future__ import annotations

import json

from clef_platform.layout.checkpoint import CheckpointError

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def parse_snapshot(raw: bytes, name: str) -> dict:
    """The snapshot's JSON; CheckpointError naming `name` when it is not one."""
    try:
        snap = json.loads(raw)
        if not all(isinstance(r["checkpoint_dir_name"], str) for r in snap["checkpoint_results"]):
            raise ValueError("a checkpoint_dir_name that is not a string")
        return snap
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{name}: not a readable Ray Train checkpoint snapshot "
                              f"({type(e).__name__}: {e})") from None


def read_snapshot(fs, path: str) -> dict | None:
    """The snapshot at `path` on a pyarrow filesystem; None when the run has none."""
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    return parse_snapshot(raw, path)


def registered_dirs(snap: dict) -> set[str]:
    return {r["checkpoint_dir_name"] for r in snap["checkpoint_results"]}


def loop_reports(snap: dict, key: str = "loss") -> list[dict]:
    """The loop's reports (dicts with a step and `key`) anywhere in the snapshot, one per step.
    Ray keeps them nested, some as JSON text, so the whole document is walked."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "step" in node and key in node:
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and node.startswith(("{", "[")):
            try:
                walk(json.loads(node))
            except ValueError:
                pass          # a string that only looks like JSON

    walk(snap)
    return sorted({r["step"]: r for r in found}.values(), key=lambda r: r["step"])
