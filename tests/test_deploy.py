"""The deployment files (infra/k8s/, infra/ray/cluster.yaml, Dockerfile) against the real
schemas, strictly: KubeRay and Prometheus Operator CRDs (copies in infra/k8s/crds/), core
Kubernetes through kubernetes-validate, `ray up` through the installed ray's ray-schema.json.
No container or cluster is started; these only parse."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from infra import validate_manifests as vm

ROOT = Path(__file__).resolve().parents[1]


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "infra" / "k8s" / name).read_text()) if d]


def test_every_deployment_file_validates_strictly():
    files = {p.name for p in vm.deployment_files()}
    assert {"raycluster.yaml", "rayjob-pretrain-large.yaml", "evaluate-cronjob.yaml",
            "podmonitors.yaml", "prometheusrule.yaml", "cluster.yaml"} <= files
    seen = [name for f in vm.deployment_files() for name in vm.validate_file(f)]
    kinds = {s.split()[1].split("/")[0] for s in seen if s.startswith(("ray.io", "batch", "monitoring"))}
    assert kinds == {"RayCluster", "RayJob", "CronJob", "PodMonitor", "PrometheusRule"}
    # the command-line form users run says the same
    p = subprocess.run([sys.executable, str(ROOT / "infra" / "validate_manifests.py")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "FAIL" not in p.stdout


def test_crd_copies_ship_with_their_licences():
    for d in vm.CRD_DIRS:
        assert "Apache License" in (d / "LICENSE").read_text()
        assert "commit" in (d / "SOURCE.txt").read_text()
    assert {k for _, k in vm.crd_schemas()} == {"RayCluster", "RayJob", "RayCronJob", "PodMonitor",
                                              "ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("name, good, bad, field", [
    # an optional field misspelled: the CRD alone accepts it, strict validation does not
    ("raycluster.yaml", "enableInTreeAutoscaling:", "enableInTreeAutoscale:",
     "enableInTreeAutoscale"),
    ("rayjob-pretrain-large.yaml", "shutdownAfterJobFinishes:", "shutdownAfterJobFinish:",
     "shutdownAfterJobFinish"),
    ("podmonitors.yaml", "podTargetLabels: [ray.io", "podTargetLabel: [ray.io", "podTargetLabel"),
    ("prometheusrule.yaml", "annotations:", "annotation:", "annotation"),
])
def test_misspelled_field_in_a_custom_resource_fails(tmp_path, name, good, bad, field):
    text = (ROOT / "infra" / "k8s" / name).read_text()
    assert good in text
    broken = tmp_path / name
    broken.write_text(text.replace(good, bad, 1))
    with pytest.raises(vm.ManifestError, match=f"'{field}' was unexpected"):
        vm.validate_file(broken)
    # the CRD's own schema lets the typo through: the strictness is what catches it
    doc = next(d for d in yaml.safe_load_all(broken.read_text()) if d)
    raw = vm.crd_raw_schemas()[(doc["apiVersion"], doc["kind"])]
    jsonschema.Draft7Validator(raw).validate(doc)


def test_alert_files_are_generated_and_pass_promtool(tmp_path):
    """The committed rules file and PrometheusRule are what monitoring.alerts writes, and the
    rules pass `promtool check rules` (Debian's prometheus package ships promtool)."""
    from clef_platform.monitoring import alerts

    for path, write in ((alerts.RULES_FILE, alerts.write_rules),
                        (alerts.PROMETHEUS_RULE, alerts.write_prometheus_rule)):
        assert (ROOT / path).read_text() == write(tmp_path / path.name).read_text(), \
            f"{path} is stale: python -m clef_platform.monitoring.alerts --write"
    p = subprocess.run(["promtool", "check", "rules", str(ROOT / alerts.RULES_FILE)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "SUCCESS: 5 rules found" in p.stdout, p.stdout + p.stderr
    spec = yaml.safe_load((ROOT / alerts.PROMETHEUS_RULE).read_text())["spec"]
    assert spec == yaml.safe_load((ROOT / alerts.RULES_FILE).read_text())


def test_misspelled_field_in_a_pod_template_or_core_object_fails(tmp_path):
    # inside the RayJob's worker pod template (checked with the core PodSpec schema)
    text = (ROOT / "infra" / "k8s" / "rayjob-pretrain-large.yaml").read_text()
    broken = tmp_path / "rayjob.yaml"
    broken.write_text(text.replace("tolerations:", "toleration:", 1))
    with pytest.raises(vm.ManifestError, match="'toleration' was unexpected"):
        vm.validate_file(broken)
    cron = (ROOT / "infra" / "k8s" / "evaluate-cronjob.yaml").read_text()
    broken = tmp_path / "cron.yaml"
    broken.write_text(cron.replace("concurrencyPolicy:", "concurencyPolicy:", 1))
    with pytest.raises(vm.ManifestError, match=r"cron\.yaml#0: batch/v1 CronJob/clef-evaluate: at spec: .*'concurencyPolicy' was unexpected"):
        vm.validate_file(broken)


def test_ray_up_config_validates_against_the_installed_ray_schema(tmp_path):
    cfg = ROOT / "infra" / "ray" / "cluster.yaml"
    assert vm.validate_file(cfg) == ["ray cluster clef"]
    broken = tmp_path / "cluster.yaml"
    broken.write_text(cfg.read_text().replace("idle_timeout_minutes:", "idle_timeout_minute:", 1))
    with pytest.raises(vm.ManifestError, match="'idle_timeout_minute' was unexpected"):
        vm.validate_file(broken)
    broken.write_text(cfg.read_text().replace("min_workers: 0", "min_worker: 0", 1))
    with pytest.raises(vm.ManifestError, match="'min_worker' was unexpected"):
        vm.validate_file(broken)


def test_manifests_bind_no_wildcard_and_hold_no_credentials():
    def strings(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield str(k)
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        else:
            yield str(node)

    for f in vm.deployment_files():
        values = [s for d in yaml.safe_load_all(f.read_text()) if d for s in strings(d)]
        assert not [v for v in values if "0.0.0.0" in v], f.name
        assert not [v for v in values if "AWS_SECRET_ACCESS_KEY" in v or "aws_secret" in v], f.name
    job = _docs("rayjob-pretrain-large.yaml")[0]
    assert "--scale large" in job["spec"]["entrypoint"]
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    pod = workers["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    # credentials come from a Secret, storage is S3
    assert {"secretRef": {"name": "clef-s3-credentials"}} in pod["containers"][0]["envFrom"]
    assert "--storage s3://" in job["spec"]["entrypoint"]


def test_dockerfile_builds_through_the_bootstrap_with_pinned_files():
    df = DockerfileParser(path=str(ROOT / "Dockerfile"))
    ins = df.structure
    args = [i["value"] for i in ins if i["instruction"] == "ARG"]
    assert "CUDA=none" in args                      # CPU image by default
    froms = [i["value"] for i in ins if i["instruction"] == "FROM"]
    assert froms[-1] == "base-${CUDA}" and any("nvidia/cuda" in f for f in froms)
    runs = " ".join(i["value"] for i in ins if i["instruction"] == "RUN")
    assert "bash infra/setup/bootstrap.sh" in runs
    # every COPY source exists, and the bootstrap's pinned files are among them
    copied = set()
    for i in ins:
        if i["instruction"] == "COPY":
            *srcs, _dest = shlex.split(i["value"])
            for s in srcs:
                assert (ROOT / s).exists(), f"COPY {s}: no such file in the checkout"
                copied.add(s.rstrip("/"))
    assert {"pyproject.toml", "infra/setup"} <= copied
    boot = (ROOT / "infra" / "setup" / "bootstrap.sh").read_text()
    for pinned in ("infra/setup/constraints.txt", "infra/setup/install_redis.sh"):
        assert pinned in boot and (ROOT / pinned).exists()
    # the image the manifests run is this one, at the workingDir they use
    assert df.baseimage == "base-none"              # the parser resolves the default ARG
    workdir = [i["value"] for i in ins if i["instruction"] == "WORKDIR"]
    assert workdir == ["/app"]
    cron = _docs("evaluate-cronjob.yaml")[0]
    c = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert c["image"].startswith("clef-platform:") and c["workingDir"] == "/app"
