"""`ray job submit --working-dir . -- python jobs/pretrain.py ...` against a `ray start --head`
cluster that this test starts on 127.0.0.1 and stops by its PID (never `ray stop`, which would
stop every Ray on a shared machine)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tests.helpers import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent



@pytest.fixture
def head_node():
    port, dash = free_port(), free_port()
    temp = f"/tmp/rj{port}"          # short: Ray's unix socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray 2.60 heads require a token (~/.ray/auth_token); clients only send it in token mode.
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}:{env.get('PATH', '')}",
               TORCH_EXTENSIONS_DIR=env.get("TORCH_EXTENSIONS_DIR", "/tmp/clef-torch-ext"))
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--port", str(port),
           "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--temp-dir", temp, "--num-cpus", "4",
           "--ray-client-server-port", str(free_port()),
           "--dashboard-agent-listen-port", str(free_port()),
           "--dashboard-agent-grpc-port", str(free_port()),
           "--metrics-export-port", str(free_port()),
           "--runtime-env-agent-port", str(free_port()),
           "--min-worker-port", "20000", "--max-worker-port", "29999",
           "--disable-usage-stats"]
    log = open(Path(temp + ".log"), "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited {proc.returncode}: "
                                       f"{Path(temp + '.log').read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the Ray head's dashboard did not come up in 180 s")
                time.sleep(1)
        yield {"address": url, "env": env}
    finally:
        # `ray start --block` tears down the processes it started when it gets SIGTERM.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_succeeds_with_checkpoint_and_export(ludb_train_data, head_node, tmp_path):
    from clef_platform.layout.export import load_export
    from clef_platform.layout.export import list_exports, run_url

    storage = tmp_path / "runs"
    sub_id = f"clef-pretrain-{os.getpid()}"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head_node["address"],
           "--submission-id", sub_id, "--working-dir", ".", "--",
           "python", "jobs/pretrain.py", "--scale", "small", "--method", "clef",
           "--data", ludb_train_data["data"], "--features", ludb_train_data["features"],
           "--storage", str(storage), "--run-name", "submitted", "--workers", "2",
           "--batch-per-worker", "4", "--steps", "3", "--checkpoint-every", "3",
           "--cpus-per-worker", "1", "--data.loader_workers", "1", "--zero-stage", "1"]
    out = subprocess.run(cmd, cwd=REPO, env=head_node["env"], capture_output=True, text=True,
                         timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head_node["address"])
    assert client.get_job_status(sub_id) == JobStatus.SUCCEEDED, client.get_job_logs(sub_id)[-3000:]
    logs = client.get_job_logs(sub_id)
    assert '"step": 3' in logs and "risk table" in logs   # the job's own summary and driver log

    run = storage / "submitted"
    assert any(p.name.startswith("checkpoint_") for p in run.iterdir())
    exports = list_exports(run_url(str(storage), "submitted"))
    assert list(exports) == [3]
    enc = load_export(exports[3])
    with torch.no_grad():
        z = enc(torch.randn(2, 1, 5000))
    assert z.shape == (2, 256) and torch.isfinite(z).all()
