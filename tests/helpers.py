"""Small helpers shared by the tests (importable as `tests.helpers`; pytest puts the repo root
on sys.path through `pythonpath` in pyproject.toml)."""

import importlib.util
import socket
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (servers in tests bind to loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_job(name: str) -> ModuleType:
    """jobs/<name>.py as a module, so a test can call its main(argv) in-process."""
    spec = importlib.util.spec_from_file_location(f"{name}_job", REPO / "jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
