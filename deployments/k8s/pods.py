"""Pod templates for the Ray head and worker groups: container resources, the environment
(pod IP for NIXL's side channel, UCX transports, the shared model cache), /dev/shm, the models
volume and health probes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deployments.k8s.cluster import ClusterConfig, PodShape

DASHBOARD_PORT = 8265
SERVE_PORT = 8000  # KubeRay's serve Service targets the head container port named "serve"
AGENT_PORT = 52365  # the dashboard agent: serves /api/local_raylet_healthz on every node
SHM_VOLUME, MODELS_VOLUME = "dshm", "models"
# Every address an engine advertises must be the pod's own: vLLM's NIXL side channel and
# PREFILLSHARE_HOST (what vllm_runtime.replica_env binds engines to) come from the pod IP.
_POD_IP_VARS = ("POD_IP", "VLLM_HOST_IP", "PREFILLSHARE_HOST", "VLLM_NIXL_SIDE_CHANNEL_HOST")


def quantity_gib(gib: float) -> str:
    return f"{gib:g}Gi" if float(gib).is_integer() else f"{int(gib * 1024)}Mi"


def quantity(n: float) -> str:
    return f"{n:g}"


def ray_env(cluster: ClusterConfig, *, engines: bool) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": name, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
        for name in _POD_IP_VARS
    ]
    mount = cluster.models.mount_path
    env += [
        # Converted models (the smollm2 alias) and HF downloads live on the shared volume, so
        # every pod sees one model at one path (NIXL's handshake compares model paths).
        {"name": "PREFILLSHARE_CACHE", "value": f"{mount}/cache"},
        {"name": "HF_HOME", "value": f"{mount}/hf"},
    ]
    if cluster.hf_token_secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": cluster.hf_token_secret, "key": "token", "optional": True}}})
    if engines:
        net = cluster.network
        env.append({"name": "UCX_TLS", "value": net.transports})
        if net.ucx_net_devices:
            env.append({"name": "UCX_NET_DEVICES", "value": net.ucx_net_devices})
    env += [{"name": k, "value": v} for k, v in sorted(cluster.network.extra_env.items())]
    return env


def _http_probe(port: int, path: str, *, initial_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "initialDelaySeconds": initial_s,
            "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": failures}


def head_probes() -> dict[str, Any]:
    # GCS health through the dashboard: a head whose GCS is gone is restarted.
    gcs = (DASHBOARD_PORT, "/api/gcs_healthz")
    return {"readinessProbe": _http_probe(*gcs, initial_s=10, failures=10),
            "livenessProbe": _http_probe(*gcs, initial_s=30, failures=120)}


def worker_probes() -> dict[str, Any]:
    # The node's raylet; engines are Serve replicas with their own health checks, so a pod is
    # not restarted while an engine loads weights (minutes for a large model).
    raylet = (AGENT_PORT, "/api/local_raylet_healthz")
    return {"readinessProbe": _http_probe(*raylet, initial_s=10, failures=10),
            "livenessProbe": _http_probe(*raylet, initial_s=30, failures=120)}


def _resources(shape: PodShape, gpus: int, extra: dict[str, int]) -> dict[str, Any]:
    amounts: dict[str, str] = {"cpu": quantity(shape.cpus), "memory": quantity_gib(shape.memory_gib)}
    limits = dict(amounts)
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    limits.update({k: str(v) for k, v in sorted(extra.items())})
    return {"requests": amounts, "limits": limits}


def _volumes(cluster: ClusterConfig, shape: PodShape) -> list[dict[str, Any]]:
    return [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": quantity_gib(shape.shm_gib)}},
        {"name": MODELS_VOLUME, "persistentVolumeClaim": {"claimName": cluster.models.claim_name}},
    ]


def _mounts(cluster: ClusterConfig) -> list[dict[str, Any]]:
    return [{"name": SHM_VOLUME, "mountPath": "/dev/shm"},
            {"name": MODELS_VOLUME, "mountPath": cluster.models.mount_path}]


def pod_template(cluster: ClusterConfig, *, component: str, shape: PodShape, gpus: int,
                 container_name: str, ports: list[dict[str, Any]], probes: dict[str, Any],
                 engines: bool, extra_mounts: Sequence[dict[str, Any]] = (),
                 extra_volumes: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    net = cluster.network
    container: dict[str, Any] = {
        "name": container_name,
        "image": cluster.image,
        "imagePullPolicy": cluster.image_pull_policy,
        "resources": _resources(shape, gpus, net.rdma_resources if engines else {}),
        "env": ray_env(cluster, engines=engines),
        "volumeMounts": [*_mounts(cluster), *extra_mounts],
        **probes,
    }
    if ports:
        container["ports"] = ports
    if engines and net.rdma:
        # RDMA registers (pins) GPU and host memory: the verbs library needs IPC_LOCK.
        container["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [*_volumes(cluster, shape), *extra_volumes],
    }
    if shape.node_selector:
        spec["nodeSelector"] = dict(shape.node_selector)
    if shape.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in shape.tolerations]
    if cluster.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in cluster.image_pull_secrets]
    labels = {"app.kubernetes.io/name": "prefillshare", "app.kubernetes.io/instance": cluster.name,
              "app.kubernetes.io/component": component}
    return {"metadata": {"labels": labels}, "spec": spec}


def head_ports() -> list[dict[str, Any]]:
    return [{"name": "gcs-server", "containerPort": 6379},
            {"name": "dashboard", "containerPort": DASHBOARD_PORT},
            {"name": "client", "containerPort": 10001},
            {"name": "serve", "containerPort": SERVE_PORT},
            {"name": "metrics", "containerPort": 8080}]


def worker_ports() -> list[dict[str, Any]]:
    return [{"name": "metrics", "containerPort": 8080}]
