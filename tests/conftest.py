"""Shared fixtures. One Ray instance per test session (starting Ray costs 5-30 s here).

S3 tests talk to a real moto server on 127.0.0.1. Ray workers inherit the environment of the
raylet, which starts with the session's first `ray_local`, so the AWS test environment (dummy
credentials, the endpoint URL on a reserved port, no instance metadata) is set before Ray
starts, and the moto server itself only starts when an S3 test asks for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tests.helpers import free_port



@pytest.fixture(scope="session")
def aws_test_env():
    """Dummy AWS credentials and a loopback endpoint for the whole session (never real AWS)."""
    port = free_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(aws_test_env):
    """A private local Ray instance (never a stray cluster), 4 logical CPUs on 2 cores."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def moto_s3(aws_test_env):
    """`moto_server` on 127.0.0.1 as a subprocess; stopped by its PID at session end."""
    url = aws_test_env["AWS_ENDPOINT_URL"]
    port = url.rsplit(":", 1)[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", port],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except urllib.error.HTTPError:   # any HTTP answer means it is serving
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"moto_server exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not answer within 60 s")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def ludb_train_data(ray_local, tmp_path_factory):
    """LUDB ingested into small shards (8 records each, ~21 train shards) plus a Feast repository
    built from its manifest's header demographics; built once per session for the training tests.
    Returns {"data": dataset folder, "features": feature repository folder}."""
    import logging

    from clef_platform.features.build import build_feature_store
    from clef_platform.features.config import FeatureStoreConfig
    from clef_platform.ingest.pipeline import IngestConfig, run_ingest

    root = tmp_path_factory.mktemp("ludb_train")
    data, repo = root / "ludb", root / "features"
    summary = run_ingest(IngestConfig(corpus="ludb", source=Path("data/ludb/data").resolve(),
                                      dest=str(data), shard_bytes=1_000_000, workers=2,
                                      cpus_per_worker=0.5))
    assert summary.balanced
    logging.getLogger("feast").setLevel(logging.WARNING)
    build_feature_store(repo, FeatureStoreConfig(), None, str(data / "manifest.parquet"),
                        do_materialise=False)
    return {"data": str(data), "features": str(repo)}
