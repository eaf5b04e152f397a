"""Canary credentials never leave the environment (docs/security.md, "Secrets").

Fake AWS keys and session token in the environment, a Redis password in the environment and on
the command line; the jobs run at DEBUG (boto's and botocore's request logging included) and
fail against closed loopback ports. No canary may appear in their stdout, stderr, any file
under their outputs or their failure details. Also checked: the masking itself on the shapes
botocore prints.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clef_platform import logs

REPO = Path(__file__).resolve().parents[1]
KEY_ID = "AKIACANARYKEY0000001"
SECRET = "canarySecretKey/0123456789abcdefghijklmnopqrstuv"
TOKEN = "canarySessionToken" + "Q" * 64
REDIS_ENV_PW = "canaryRedisEnvPassword42"
REDIS_CLI_PW = "canaryRedisCliPassword42"
CANARIES = [KEY_ID, SECRET, TOKEN, REDIS_ENV_PW, REDIS_CLI_PW]


def canary_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_SESSION_TOKEN=TOKEN,
               AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_DEFAULT_REGION="us-east-1",
               AWS_MAX_ATTEMPTS="1", AWS_EC2_METADATA_DISABLED="true",
               CLEF_REDIS_CONNECTION=f"127.0.0.1:9,password={REDIS_ENV_PW}",
               CLEF_LOG_DIR=str(tmp / "logs"))
    return env


def leaks(texts: dict[str, str]) -> list[tuple[str, str]]:
    return [(where, c) for where, text in texts.items() for c in CANARIES if c in text]


def scan(tmp: Path, done: subprocess.CompletedProcess) -> dict[str, str]:
    texts = {"stdout": done.stdout, "stderr": done.stderr}
    for p in tmp.rglob("*"):
        if p.is_file():
            texts[str(p)] = p.read_bytes().decode("utf-8", "replace")
    return texts


def test_masking_of_what_botocore_prints(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    logs.register_secret(REDIS_CLI_PW)
    record = logging.LogRecord("botocore.endpoint", logging.DEBUG, __file__, 1,
                               "Sending http request: %s", (
                                   f"<AWSPreparedRequest headers={{'X-Amz-Security-Token': "
                                   f"b'{TOKEN}', 'Authorization': b'AWS4-HMAC-SHA256 "
                                   f"Credential={KEY_ID}/20261202/us-east-1/s3/aws4_request, "
                                   f"Signature=0123abcd'}}> redis://u:{REDIS_CLI_PW}@h "
                                   f"x,password=other-pw-77"), None)
    line = logs.MaskingFormatter(logs.FORMAT).format(record)
    assert not [c for c in CANARIES if c in line], line
    assert "0123abcd" not in line and "other-pw-77" not in line
    assert "Sending http request" in line and logs.MASK in line


@pytest.mark.slow
def test_canaries_reach_no_output_and_no_log_line(tmp_path):
    env = canary_env(tmp_path)
    # Feature store on Redis, password on the command line: the build fails at materialise
    # (nothing listens on port 9); the yaml it wrote refers to ${CLEF_REDIS_PASSWORD}.
    features = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "build_features.py"), "--repo",
         str(tmp_path / "features"), "--mimic-hosp", str(REPO / "data" / "mimic-iv-demo" / "hosp"),
         "--online-store", "redis", "--redis-connection", f"127.0.0.1:9,password={REDIS_CLI_PW}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert features.returncode == 1, features.stderr[-3000:]
    yaml_text = (tmp_path / "features" / "feature_store.yaml").read_text()
    assert "${CLEF_REDIS_PASSWORD}" in yaml_text
    # Evaluation of a run on S3 at DEBUG: botocore signs and logs requests to a closed port.
    evaluate = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), "--run", "s3://clef-canary/run",
         "--data-root", str(tmp_path / "datasets"), "--log-level", "DEBUG", "--tasks",
         "ludb_sex", "--num-cpus", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert evaluate.returncode == 1, evaluate.stderr[-3000:]
    assert "botocore" in evaluate.stderr          # the DEBUG lines were there to be masked
    texts = scan(tmp_path, features) | {f"evaluate {k}": v for k, v in
                                        scan(tmp_path, evaluate).items()}
    assert list((tmp_path / "logs").glob("*.log")), "no failure details were written"
    assert not leaks(texts), leaks(texts)
