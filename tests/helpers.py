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


def ludb_pretrain_config(ludb: dict, tmp_path: Path, run_name: str, *extra: str):
    """A small CLEF pretraining config on the LUDB training fixture, built the way a user's
    command line is (one worker CPU each, metrics every step); `extra` adds or overrides flags."""
    from clef_platform.train.config import PretrainConfig
    return PretrainConfig.from_args([
        "--scale", "small", "--method", "clef", "--data", ludb["data"],
        "--features", ludb["features"], "--storage", str(tmp_path / "runs"),
        "--run-name", run_name, "--cpus-per-worker", "1", "--data.loader_workers", "1",
        "--metrics.log_every", "1", *extra])


# Corpora whose Python adapters became specs: (source folder, shard bytes) of the ingests whose
# shard digests tests/reference/golden_shards.json recorded from the adapters.
GOLDEN_INGESTS = {"ludb": ("data/ludb", 1_000_000), "cinc2021": ("data/cinc2021-sample", 600_000)}


def ingest_fingerprint(corpus: str, source: Path, dest: Path, shard_bytes: int,
                       list_refs=None) -> dict:
    """Ingest `source` as `corpus` into `dest` (Ray initialised): the dataset digest, record
    count and every shard's SHA-256."""
    from clef_platform.ingest.pipeline import IngestConfig, default_list_refs, run_ingest
    from clef_platform.layout.dataset import open_dataset

    summary = run_ingest(IngestConfig(corpus, source, str(dest), shard_bytes=shard_bytes),
                         list_refs=list_refs or default_list_refs)
    dataset = open_dataset(str(dest))
    return {"digest": summary.digest, "records": summary.stored,
            "shards": {name: s.sha256 for name, s in sorted(dataset.shards.items())}}
