"""Offline validation of rendered manifests against the schemas a cluster applies.

tests/data/k8s-schemas/ (see its README.md) holds, with descriptions stripped:
  kuberay-rayservice.json, kuberay-rayjob.json  the ray.io/v1 openAPIV3Schema of KubeRay's CRDs
  kubernetes-v1.32.json   the Kubernetes 1.32 schemas of PodTemplateSpec, ConfigMap and
                          PersistentVolumeClaim and every definition they reference (strict:
                          unknown fields are errors, as with `kubectl apply --validate=strict`)

`python -m tests.k8s_schemas --crds DIR --kubernetes DIR` rebuilds them from the sources.
"""

from __future__ import annotations

import argparse
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).parent / "data" / "k8s-schemas"
KUBERNETES_VERSION = "v1.32"
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayJob": "ray.io_rayjobs.yaml"}
KUBERNETES_KINDS = {  # (apiVersion, kind) -> definition name
    ("v1", "ConfigMap"): "io.k8s.api.core.v1.ConfigMap",
    ("v1", "PersistentVolumeClaim"): "io.k8s.api.core.v1.PersistentVolumeClaim",
    ("", "PodTemplateSpec"): "io.k8s.api.core.v1.PodTemplateSpec",
}


def strip_descriptions(node: Any) -> Any:
    """Drops documentation only: a `description` whose value is text (a property that happens
    to be called description has a schema, a dict, as its value and stays)."""
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items()
                if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def crd_schema(crd: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return strip_descriptions(served["schema"]["openAPIV3Schema"])


def kubernetes_subset(definitions: dict[str, Any]) -> dict[str, Any]:
    """The definitions reachable from KUBERNETES_KINDS (kubernetes-validate's _definitions.json)."""
    defs = definitions["$defs"]
    keep: set[str] = set()
    todo = list(KUBERNETES_KINDS.values())
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        todo += re.findall(r'"\$ref": "#/\$defs/([^"]+)"', json.dumps(defs[name]))
    return {"$schema": definitions.get("$schema"),
            "$defs": {k: strip_descriptions(defs[k]) for k in sorted(keep)}}


def strict(schema: Any) -> Any:
    """CRD schemas leave additionalProperties open and the API server prunes unknown fields
    silently, so a misspelt field would vanish on apply; kubectl's strict field validation
    rejects it instead. Closing every object that lists its properties does the same here."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) if k in ("items", "anyOf", "allOf", "oneOf", "not") else v
           for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if ("additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    return out


def _load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / name).read_text())


@lru_cache(maxsize=None)
def _crd_validator(kind: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(strict(_load(f"kuberay-{kind.lower()}.json")))


@lru_cache(maxsize=None)
def _kubernetes_validator(definition: str) -> jsonschema.protocols.Validator:
    subset = _load(f"kubernetes-{KUBERNETES_VERSION}.json")
    return jsonschema.Draft202012Validator({"$defs": subset["$defs"],
                                            "$ref": f"#/$defs/{definition}"})


def _errors(validator: jsonschema.protocols.Validator, obj: Any, where: str) -> list[str]:
    return [f"{where}.{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(obj)]


def pod_templates(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Path -> pod template, for every pod template inside a RayService or RayJob."""
    spec = manifest["spec"]
    cluster, prefix = ((spec["rayClusterConfig"], "spec.rayClusterConfig")
                       if manifest["kind"] == "RayService"
                       else (spec["rayClusterSpec"], "spec.rayClusterSpec"))
    out = {f"{prefix}.headGroupSpec.template": cluster["headGroupSpec"]["template"]}
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        out[f"{prefix}.workerGroupSpecs.{i}.template"] = group["template"]
    return out


def validate_manifest(manifest: dict[str, Any]) -> list[str]:
    """Every schema error of one manifest (empty: valid)."""
    api, kind = manifest.get("apiVersion", ""), manifest.get("kind", "")
    if api == "ray.io/v1" and kind in CRD_FILES:
        errors = _errors(_crd_validator(kind), manifest, kind)
        if errors:
            return errors
        # KubeRay's CRDs embed a pruned pod schema; the pods it creates must also pass
        # Kubernetes' own (exact field names and types).
        for where, template in pod_templates(manifest).items():
            errors += _errors(_kubernetes_validator(KUBERNETES_KINDS[("", "PodTemplateSpec")]),
                              template, where)
        return errors
    definition = KUBERNETES_KINDS.get((api, kind))
    if definition is None:
        return [f"no schema for apiVersion {api!r} kind {kind!r}"]
    return _errors(_kubernetes_validator(definition), manifest, kind)


def refresh(crds: Path, kubernetes: Path) -> None:
    """crds: KubeRay's ray-operator/config/crd/bases; kubernetes: kubernetes-validate's
    kubernetes-json-schema/<version>-local-strict folder."""
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    for kind, file in CRD_FILES.items():
        schema = crd_schema(yaml.safe_load((crds / file).read_text()))
        (SCHEMA_DIR / f"kuberay-{kind.lower()}.json").write_text(dump(schema))
    subset = kubernetes_subset(json.loads((kubernetes / "_definitions.json").read_text()))
    (SCHEMA_DIR / f"kubernetes-{KUBERNETES_VERSION}.json").write_text(dump(subset))


def dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=refresh.__doc__)
    parser.add_argument("--crds", type=Path, required=True)
    parser.add_argument("--kubernetes", type=Path, required=True)
    args = parser.parse_args()
    refresh(args.crds, args.kubernetes)
