"""The Redis online store against a real redis-server started here on 127.0.0.1 (random free
port) and stopped by its PID. infra/setup/install_redis.sh installs the server where missing."""

import shutil
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from clef_model.risk import score2
from clef_platform.features.config import FeatureStoreConfig
from clef_platform.features.schema import FLOOR
from tests.helpers import free_port

REDIS = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if shutil.os.path.exists("/usr/bin/redis-server") else None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    REDIS is None, reason="redis-server binary not found (run infra/setup/install_redis.sh)")]
T0 = pd.Timestamp("2160-05-01 09:30", tz="UTC")



@pytest.fixture(scope="module")
def redis_server():
    port = free_port()
    proc = subprocess.Popen([REDIS, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    conn = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            if conn.ping():
                break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not answer PING")
    yield port, conn
    proc.terminate()            # by PID: only the server this module started
    proc.wait(timeout=10)


def _obs():
    rows = []
    for i, (age, male, sbp) in enumerate([(52, 1, 135), (66, 0, 150), (78, 1, 160)]):
        pid = f"r/{i}"
        rows += [(pid, "age", age, T0, FLOOR), (pid, "male", male, pd.NaT, FLOOR),
                 (pid, "sbp", sbp, T0, T0), (pid, "total_chol", 5.0 + i, T0, T0),
                 (pid, "hdl", 1.2, T0, T0), (pid, "smoker", i % 2, T0, T0),
                 (pid, "diabetes", 0, T0, T0)]
    return pd.DataFrame(rows, columns=["patient_id", "feature", "value", "observed_at",
                                       "known_at"]).assign(source="test")


@pytest.fixture(scope="module")
def client(redis_server, tmp_path_factory):
    from clef_platform.features.build import build_from_observations
    from clef_platform.features.client import RiskClient

    port, _ = redis_server
    cfg = FeatureStoreConfig(online_store="redis", redis_connection=f"127.0.0.1:{port}")
    repo = build_from_observations(tmp_path_factory.mktemp("fs_redis") / "repo", _obs(), cfg)
    return RiskClient(repo)


def test_yaml_points_at_redis(client, redis_server):
    port, conn = redis_server
    text = (client.repo / "feature_store.yaml").read_text()
    assert "type: redis" in text and f"127.0.0.1:{port}" in text
    assert conn.dbsize() > 0, "materialisation wrote nothing to Redis"


def test_online_redis_matches_clef_model_and_historical(client):
    ids = ["r/0", "r/1", "r/2", "unknown/9"]
    online = client.online(ids, at=T0).set_index("patient_id")
    hist = client.lookup([(p, T0) for p in ids]).set_index("patient_id")
    for i, (age, male, sbp) in enumerate([(52, 1, 135), (66, 0, 150), (78, 1, 160)]):
        expected = score2(age, bool(male), bool(i % 2), sbp, 5.0 + i, 1.2, False)
        assert online.loc[f"r/{i}", "risk"] == pytest.approx(expected, rel=1e-12)
        assert online.loc[f"r/{i}", "missing_fraction"] == 0.0
        assert hist.loc[f"r/{i}", "risk"] == pytest.approx(expected, rel=1e-12)
    assert online.loc["unknown/9", "missing_fraction"] == 1.0
    # Evaluated before the values were known, online serving does not use them either.
    early = client.online(["r/0"], at=T0 - pd.Timedelta(seconds=1)).iloc[0]
    assert np.isnan(early["sbp_at_ecg"]) and early["missing_fraction"] == pytest.approx(5 / 7)
