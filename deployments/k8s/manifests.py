"""The Kubernetes objects: a RayService for serving, a RayJob (plus its ConfigMap) for decoder
training, and the PersistentVolumeClaim both mount. Plain dicts, in the order kubectl shows."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import yaml

from deployments.k8s.cluster import ClusterConfig, WorkerGroup, pool_resource
from deployments.k8s.placement import GroupPlan
from deployments.k8s.pods import (
    AGENT_PORT,
    head_ports,
    head_probes,
    pod_template,
    quantity_gib,
    worker_ports,
    worker_probes,
)
from training.config import TrainConfig

TRAIN_CONFIG_DIR = "/etc/prefillshare/train"
TRAIN_CONFIG_KEY = "train.yaml"
TRAIN_GROUP = "train"
API_KEYS_DIR = "/etc/prefillshare"  # auth.keys_file: /etc/prefillshare/api-keys


def _metadata(cluster: ClusterConfig, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "labels": {"app.kubernetes.io/name": "prefillshare",
                                     "app.kubernetes.io/instance": cluster.name,
                                     "app.kubernetes.io/component": component}}


def _head_group(cluster: ClusterConfig, extra_mounts: Sequence[dict[str, Any]] = (),
                extra_volumes: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        # num-cpus 0: the scheduler never puts a task or an engine replica on the head.
        "rayStartParams": {"num-cpus": "0", "num-gpus": "0", "dashboard-host": "0.0.0.0",
                           "dashboard-agent-listen-port": str(AGENT_PORT)},
        "template": pod_template(cluster, component="head", shape=cluster.head, gpus=0,
                                 container_name="ray-head", ports=head_ports(),
                                 probes=head_probes(), engines=False, extra_mounts=extra_mounts,
                                 extra_volumes=extra_volumes),
    }


def _api_keys(cluster: ClusterConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Mount and volume of the ingress's API-key Secret (none when not configured). Mounted as
    a folder, not a subPath, so a rotated Secret reaches the pods without a restart."""
    if not cluster.api_keys_secret:
        return [], []
    return ([{"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True}],
            [{"name": "api-keys", "secret": {"secretName": cluster.api_keys_secret,
                                              "defaultMode": 0o400}}])


def _worker_group(cluster: ClusterConfig, plan: GroupPlan, *, engines: bool,
                  extra_mounts: Sequence[dict[str, Any]] = (),
                  extra_volumes: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    spec = plan.spec
    group: dict[str, Any] = {
        "groupName": plan.name,
        "replicas": plan.replicas,
        "minReplicas": plan.min_workers,
        "maxReplicas": spec.max_workers,
        "rayStartParams": {"dashboard-agent-listen-port": str(AGENT_PORT)},
    }
    if engines:
        # Ray resources of each pod of this group: CPU/GPU/memory come from the container
        # limits; the pool resource is what the placed engine replicas request.
        group["resources"] = {pool_resource(plan.name): str(spec.engine_slots)}
        group["idleTimeoutSeconds"] = spec.idle_timeout_s
    group["template"] = pod_template(cluster, component=f"worker-{plan.name}", shape=spec,
                                     gpus=spec.gpus, container_name="ray-worker",
                                     ports=worker_ports(), probes=worker_probes(), engines=engines,
                                     extra_mounts=extra_mounts, extra_volumes=extra_volumes)
    return group


def ray_service(cluster: ClusterConfig, groups: list[GroupPlan],
                serve_config: dict[str, Any]) -> dict[str, Any]:
    keys_mounts, keys_volumes = _api_keys(cluster)
    cluster_spec: dict[str, Any] = {
        "rayVersion": cluster.ray_version,
        # The Ray autoscaler adds worker pods when Serve's replicas wait for a pool resource.
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "version": "v2",
            "upscalingMode": "Default",
            "idleTimeoutSeconds": cluster.ray_autoscaler_idle_timeout_s,
            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"},
                          "limits": {"cpu": "1", "memory": "1Gi"}},
        },
        "headGroupSpec": _head_group(cluster, keys_mounts, keys_volumes),
        "workerGroupSpecs": [_worker_group(cluster, g, engines=True, extra_mounts=keys_mounts,
                                           extra_volumes=keys_volumes) for g in groups],
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _metadata(cluster, cluster.name, "serving"),
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False, width=100),
            "rayClusterConfig": cluster_spec,
        },
    }


def models_claim(cluster: ClusterConfig) -> dict[str, Any]:
    m = cluster.models
    spec: dict[str, Any] = {"accessModes": [m.access_mode],
                            "resources": {"requests": {"storage": quantity_gib(m.size_gib)}}}
    if m.storage_class:
        spec["storageClassName"] = m.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _metadata(cluster, m.claim_name, "models"), "spec": spec}


def cluster_train_config(raw: dict[str, Any], cluster: ClusterConfig) -> dict[str, Any]:
    """The training YAML as the job reads it: relative output/storage paths move onto the
    shared models volume (where serving reads the decoder); validated by TrainConfig."""
    cfg = copy.deepcopy(raw)
    root = PurePosixPath(cluster.models.mount_path)
    for key in ("output_dir", "storage_dir"):
        if key in cfg and not PurePosixPath(str(cfg[key])).is_absolute():
            cfg[key] = str(root / str(cfg[key]))
    TrainConfig.model_validate(cfg)
    return cfg


def train_config_map(cluster: ClusterConfig, train_cfg: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(cluster, f"{cluster.name}-train-config", "training"),
            "data": {TRAIN_CONFIG_KEY: yaml.safe_dump(train_cfg, sort_keys=False)}}


def ray_job(cluster: ClusterConfig, train_cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = TrainConfig.model_validate(train_cfg)
    job = cluster.training
    spec: WorkerGroup = job.workers
    # One Ray Train worker per GPU (or per pod on a CPU pool).
    per_pod = spec.gpus or 1
    pods = -(-cfg.num_workers // per_pod)
    if pods > spec.max_workers:
        raise ValueError(f"training: {cfg.num_workers} Ray Train workers need {pods} pods; "
                         f"training.workers.max_workers is {spec.max_workers}")
    group = GroupPlan(TRAIN_GROUP, spec, (), pods, pods)
    config_volume = {"name": "train-config",
                     "configMap": {"name": f"{cluster.name}-train-config"}}
    config_mount = {"name": "train-config", "mountPath": TRAIN_CONFIG_DIR, "readOnly": True}
    entrypoint = (f"python -m training train --config {TRAIN_CONFIG_DIR}/{TRAIN_CONFIG_KEY} "
                  f"--max-failures {job.max_failures}")
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _metadata(cluster, f"{cluster.name}-train", "training"),
        "spec": {
            "entrypoint": entrypoint,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": job.ttl_after_finished_s,
            "activeDeadlineSeconds": job.active_deadline_s,
            # Retries happen inside the run (Ray Train restores the last checkpoint).
            "backoffLimit": 0,
            "rayClusterSpec": {
                "rayVersion": cluster.ray_version,
                # The driver runs on the head and reads the config from the ConfigMap.
                "headGroupSpec": _head_group(cluster, [config_mount], [config_volume]),
                "workerGroupSpecs": [_worker_group(cluster, group, engines=False)],
            },
        },
    }
