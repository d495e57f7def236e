"""Every rendered manifest validates offline against the KubeRay CRD schemas and Kubernetes'
own schemas (tests/data/k8s-schemas), and broken manifests are rejected."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.k8s.render import render_paths
from tests.k8s_schemas import (CRD_FILES, SCHEMA_DIR, crd_schema, pod_templates,
                               validate_manifest)

ROOT = Path(__file__).resolve().parents[1]
SHARED_CRDS = ROOT.parent / "shared" / "data" / "kuberay-crds"


def _manifests(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {path: yaml.safe_load(text) for path, text in files.items()}


@pytest.fixture(scope="module")
def committed() -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(ROOT / "k8s")): yaml.safe_load(p.read_text())
            for p in sorted((ROOT / "k8s").rglob("*.yaml"))}


@pytest.fixture(scope="module")
def variant(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """A second topology: its own node pool per decode role group, RDMA off, an existing
    claim, a CPU pool, multi-GPU engines, a LoRA pool."""
    d = tmp_path_factory.mktemp("variant")
    adapter = d / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    serve = yaml.safe_load((ROOT / "config.yaml").read_text())
    args = serve["applications"][0]["args"]
    args["lora_pool"] = {"replicas": 2}
    args["roles"].append({"name": "summarizer", "lora_adapter": str(adapter)})
    critic = next(r for r in args["roles"] if r["name"] == "critic")
    del critic["lora_adapter"]  # a role on a decode pool of its own, beside the LoRA pool
    (d / "config.yaml").write_text(yaml.safe_dump(serve))
    cluster = {
        "name": "ps-variant",
        "image_pull_secrets": ["registry"],
        "worker_groups": {
            "prefill": {"gpus": 8, "gpus_per_engine": 2, "max_workers": 2,
                        "node_selector": {"cloud.google.com/gke-nodepool": "h100-prefill"}},
            "decode": {"gpus": 4, "max_workers": 8},
            "decode-cpu": {"gpus": 0, "gpus_per_engine": 0, "engines_per_worker": 2,
                           "cpus": 16, "memory_gib": 64.5, "shm_gib": 4},
        },
        "placement": {"decode-critic": "decode-cpu"},
        "autoscaling_overrides": {"decode-critic": {"min_replicas": 0, "max_replicas": 2}},
        "network": {"rdma": False, "ucx_net_devices": "eth0",
                    "rdma_resources": {"rdma/ib": 1}, "extra_env": {"NCCL_DEBUG": "WARN"}},
        "models": {"create": False, "claim_name": "shared-models"},
        "hf_token_secret": None,
        "api_keys_secret": "prefillshare-api-keys",
    }
    (d / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    return _manifests(render_paths(d / "config.yaml", d / "cluster.yaml"))


def test_committed_manifests_are_valid(committed):
    assert set(committed) == {"models-pvc.yaml", "rayservice.yaml", "training/rayjob.yaml",
                              "training/train-config.yaml"}
    for path, manifest in committed.items():
        assert validate_manifest(manifest) == [], path


def test_variant_manifests_are_valid(variant):
    assert "models-pvc.yaml" not in variant  # models.create: false
    for path, manifest in variant.items():
        assert validate_manifest(manifest) == [], path
    groups = variant["rayservice.yaml"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert sorted(g["groupName"] for g in groups) == ["decode", "decode-cpu", "prefill"]
    # The API-key Secret reaches every serving pod (the ingress may land on any), read-only.
    for template in pod_templates(variant["rayservice.yaml"]).values():
        [volume] = [v for v in template["spec"]["volumes"] if v["name"] == "api-keys"]
        assert volume["secret"] == {"secretName": "prefillshare-api-keys", "defaultMode": 0o400}
        [container] = template["spec"]["containers"]
        assert {"name": "api-keys", "mountPath": "/etc/prefillshare", "readOnly": True} in \
            container["volumeMounts"]


def test_every_pod_template_is_checked_against_kubernetes(committed):
    templates = pod_templates(committed["rayservice.yaml"])
    assert len(templates) == 3  # head, prefill, decode
    broken = copy.deepcopy(committed["rayservice.yaml"])
    # A field the KubeRay CRD schema has but with Kubernetes' own type wrong for a Pod:
    # restartPolicy is a string in both; a pod-level `hostname` with a list only fails here.
    path = broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    path["hostname"] = ["not", "a", "string"]
    assert any("hostname" in e for e in validate_manifest(broken))


def _mutated(manifest: dict[str, Any], edit) -> list[str]:
    m = copy.deepcopy(manifest)
    edit(m)
    return validate_manifest(m)


def _worker(m: dict[str, Any]) -> dict[str, Any]:
    return m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]


@pytest.mark.parametrize("edit, expected", [
    (lambda m: _worker(m)["template"]["spec"].update(nodeSelecter={"a": "b"}), "nodeSelecter"),
    (lambda m: _worker(m).update(replicas="1"), "is not of type 'integer'"),
    (lambda m: _worker(m).pop("groupName"), "'groupName' is a required property"),
    (lambda m: m["spec"].update(serveConfig="{}"), "serveConfig"),
    (lambda m: m["spec"].update(serveConfigV2={"applications": []}), "is not of type 'string'"),
    (lambda m: _worker(m)["template"]["spec"]["containers"][0]["resources"]["limits"]
     .update(memory="48GB"), "does not match"),
    (lambda m: _worker(m)["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]
     .update(fieldRef={"fieldpath": "status.podIP"}), "'fieldPath' is a required property"),
    (lambda m: _worker(m)["template"]["spec"]["tolerations"][0].update(effect=3),
     "is not of type 'string'"),
    (lambda m: m["spec"]["rayClusterConfig"]["autoscalerOptions"].update(upscalingMode="Fast"),
     "is not one of"),
    (lambda m: _worker(m).update(resources={"nodepool_decode": 1}), "is not of type 'string'"),
])
def test_broken_rayservice_is_rejected(committed, edit, expected):
    errors = _mutated(committed["rayservice.yaml"], edit)
    assert any(expected in e for e in errors), errors


def test_broken_rayjob_and_plain_objects_are_rejected(committed):
    job = committed["training/rayjob.yaml"]
    assert any("entrypoint" in e for e in _mutated(job, lambda m: m["spec"].update(entrypoint=["python"])))
    assert any("rayClusterSpec" in e or "headGroupSpec" in e
               for e in _mutated(job, lambda m: m["spec"]["rayClusterSpec"].pop("headGroupSpec")))
    cm = committed["training/train-config.yaml"]
    assert _mutated(cm, lambda m: m["data"].update({"n": 3})) != []
    pvc = committed["models-pvc.yaml"]
    assert _mutated(pvc, lambda m: m["spec"].update(accessModes="ReadWriteMany")) != []
    assert _mutated(pvc, lambda m: m["spec"].update(storageClass="fast")) != []
    assert validate_manifest({"apiVersion": "apps/v1", "kind": "Deployment"}) != []


@pytest.mark.skipif(not SHARED_CRDS.exists(), reason="../shared/data/kuberay-crds not present")
def test_schema_copies_match_the_kuberay_crds():
    for kind, file in CRD_FILES.items():
        source = crd_schema(yaml.safe_load((SHARED_CRDS / file).read_text()))
        copied = json.loads((SCHEMA_DIR / f"kuberay-{kind.lower()}.json").read_text())
        assert copied == source, kind
