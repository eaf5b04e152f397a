"""Validate the deployment files against the real schemas, strictly.

    python infra/validate_manifests.py            # every file under infra/k8s/ and infra/ray/
    python infra/validate_manifests.py FILE...    # just these

Strict means what `kubectl apply --validate=strict` means: an unknown field is an error. Core
Kubernetes objects go through kubernetes-validate's strict schemas. Custom resources (KubeRay's
RayCluster/RayJob/RayCronJob, the Prometheus Operator's PodMonitor/ServiceMonitor/PrometheusRule)
go through the openAPIV3Schema of their CRD, copied with its licence into infra/k8s/crds/; those
schemas do not forbid extra fields themselves (the API server prunes them silently), so every
object schema that lists its properties and says nothing about extras gets
`additionalProperties: false` here. The `ray up` YAML goes through ray/autoscaler/ray-schema.json
of the installed ray package, made strict the same way.
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import sys
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

INFRA = Path(__file__).resolve().parent
CRD_DIRS = (INFRA / "k8s" / "crds" / "kuberay", INFRA / "k8s" / "crds" / "prometheus-operator")
K8S_VERSION = "1.37.0"      # the newest schemas kubernetes-validate 1.37.0 ships


class ManifestError(ValueError):
    """One line: the file, the document, the field path and what is wrong."""


def strict(schema: dict) -> dict:
    """A copy of `schema` where every object with listed properties forbids unlisted ones."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and "patternProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


# libyaml's loader when PyYAML has it: the KubeRay CRDs are megabytes of YAML
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=None)
def crd_raw_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the openAPIV3Schema as the CRD copy in infra/k8s/crds/ has it."""
    out = {}
    for d in CRD_DIRS:
        for f in sorted(d.glob("*.yaml.gz")):
            with gzip.open(f, "rt") as fh:
                crd = yaml.load(fh, Loader=_Loader)
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


@lru_cache(maxsize=None)
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the strict form of each CRD schema."""
    return {k: strict(v) for k, v in crd_raw_schemas().items()}


@lru_cache(maxsize=None)
def ray_cluster_schema() -> dict:
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise ManifestError("the ray package is not installed: no ray-schema.json to validate against")
    path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    return strict(json.loads(path.read_text()))


def _path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<top>"


def validate_document(doc: dict, where: str) -> str:
    """Validate one Kubernetes object; returns its `apiVersion kind/name`, raises ManifestError."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        raise ManifestError(f"{where}: not a Kubernetes object (apiVersion and kind missing)")
    api, kind = doc["apiVersion"], doc["kind"]
    name = f"{api} {kind}/{doc.get('metadata', {}).get('name', '?')}"
    schema = crd_schemas().get((api, kind))
    if schema is not None:
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc),
                        key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            raise ManifestError(f"{where}: {name}: at {_path(e)}: {e.message}")
        # The pod templates inside a custom resource are core objects: they also go through
        # the strict core schemas (the CRD embeds a PodSpec of its own Kubernetes version).
        for path, tpl in _pod_templates(doc, ""):
            _core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                   "template": tpl}, f"{where}: {name}: pod template at {path}")
        return name
    _core(doc, f"{where}: {name}")
    return name


def _pod_templates(node, path: str):
    """(field path, pod template) for every pod template nested in a custom resource."""
    if isinstance(node, dict):
        for k, v in node.items():
            sub = f"{path}.{k}" if path else k
            if k in ("template", "submitterPodTemplate") and isinstance(v, dict) \
                    and "containers" in v.get("spec", {}):
                yield sub, v
            else:
                yield from _pod_templates(v, sub)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _pod_templates(v, f"{path}.{i}")


def _core(doc: dict, where: str) -> None:
    import kubernetes_validate
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        # kubernetes-validate's error carries the jsonschema error's fields
        raise ManifestError(f"{where}: at {_path(e)}: {e.message.splitlines()[0]}") from None
    except kubernetes_validate.SchemaNotFoundError:
        raise ManifestError(f"{where}: no schema for this apiVersion/kind "
                            "(neither core Kubernetes nor a CRD in infra/k8s/crds/)") from None


def validate_k8s_file(path: Path) -> list[str]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if not docs:
        raise ManifestError(f"{path}: no document")
    return [validate_document(d, f"{path.name}#{i}") for i, d in enumerate(docs)]


def validate_ray_cluster_file(path: Path) -> str:
    cfg = yaml.safe_load(path.read_text())
    errors = sorted(jsonschema.Draft7Validator(ray_cluster_schema()).iter_errors(cfg),
                    key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise ManifestError(f"{path.name}: at {_path(e)}: {e.message}")
    return f"ray cluster {cfg['cluster_name']}"


def validate_file(path: Path) -> list[str]:
    """Dispatch on content: a `ray up` config has cluster_name and provider; else Kubernetes."""
    first = next(iter(yaml.safe_load_all(path.read_text())), None)
    if isinstance(first, dict) and "cluster_name" in first and "provider" in first:
        return [validate_ray_cluster_file(path)]
    return validate_k8s_file(path)


def deployment_files() -> list[Path]:
    return sorted((INFRA / "k8s").glob("*.yaml")) + sorted((INFRA / "ray").glob("*.yaml"))


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or deployment_files()
    bad = 0
    for f in files:
        try:
            for name in validate_file(f):
                print(f"ok   {f.name}: {name}")
        except ManifestError as e:
            print(f"FAIL {e}")
            bad += 1
        except (yaml.YAMLError, OSError) as e:
            print(f"FAIL {f.name}: {str(e).splitlines()[0]}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
