"""The cluster-side knobs of a KubeRay deployment: image, node pools, pod shapes, GPUs, /dev/shm,
autoscaling, the models volume, the NIXL/UCX network. Everything the app config (config.yaml)
does not know; the renderer combines the two. All fields have defaults, so
`prefillshare render-k8s config.yaml` needs no cluster file (`--print-cluster-defaults` shows
them as YAML to copy and edit).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Kubernetes object names and RayCluster group names: a DNS label, kept short because KubeRay
# derives pod names from them.
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,28}[a-z0-9])?$")
NODE_POOL_LABEL = "prefillshare/node-pool"


def pool_resource(group: str) -> str:
    """The custom Ray resource a worker group advertises (one unit per engine slot) and every
    replica placed on it requests; the Ray autoscaler scales the group that offers it."""
    return f"nodepool_{group}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Toleration(_Strict):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


GPU_TOLERATION = Toleration(key="nvidia.com/gpu")


class PodShape(_Strict):
    """Where a Ray pod runs and what it gets."""

    cpus: float = Field(8, gt=0, description="CPU request = limit.")
    memory_gib: float = Field(48, gt=0, description="Memory request = limit (includes /dev/shm).")
    shm_gib: float = Field(
        12, gt=0, description="/dev/shm (emptyDir, medium Memory): vLLM's worker processes and "
        "NCCL exchange tensors through it; Docker's 64 MiB default breaks them.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shm_fits(self) -> PodShape:
        # A memory-backed emptyDir counts against the container's memory limit.
        if self.shm_gib >= self.memory_gib:
            raise ValueError(f"shm_gib ({self.shm_gib}) must be below memory_gib ({self.memory_gib})")
        return self


class HeadGroup(PodShape):
    """The head runs GCS, the dashboard, the Serve controller and proxy: no engines (num-cpus 0,
    no GPU), so engine replicas can never land on it."""

    cpus: float = 4
    memory_gib: float = 16
    shm_gib: float = 2


class WorkerGroup(PodShape):
    """One Ray worker group on one Kubernetes node pool. Each worker pod offers
    `engine_slots` units of its pool resource; each engine replica placed here takes one."""

    gpus: int = Field(1, ge=0, description="nvidia.com/gpu per worker pod.")
    gpus_per_engine: int = Field(1, ge=0, description="Ray num_gpus per engine replica (TP size).")
    engines_per_worker: int | None = Field(
        None, ge=1, description="Engine slots per pod; default gpus // gpus_per_engine (1 on CPU).")
    min_workers: int | None = Field(
        None, ge=0, description="Default: enough pods for the placed deployments' min_replicas.")
    max_workers: int = Field(4, ge=1)
    idle_timeout_s: int = Field(600, ge=0, description="Ray autoscaler: remove a pod idle this long.")

    @model_validator(mode="after")
    def _gpus_split(self) -> WorkerGroup:
        if (self.gpus == 0) != (self.gpus_per_engine == 0):
            raise ValueError("gpus and gpus_per_engine are both 0 (CPU pool) or both positive")
        if self.gpus and self.gpus % self.gpus_per_engine:
            raise ValueError(f"gpus ({self.gpus}) must be a multiple of gpus_per_engine "
                             f"({self.gpus_per_engine})")
        if self.min_workers is not None and self.min_workers > self.max_workers:
            raise ValueError("min_workers must not exceed max_workers")
        return self

    @property
    def engine_slots(self) -> int:
        if self.engines_per_worker is not None:
            return self.engines_per_worker
        return self.gpus // self.gpus_per_engine if self.gpus else 1

    def workers_for(self, engines: int) -> int:
        return math.ceil(engines / self.engine_slots)


def gpu_group(pool: str, **overrides: object) -> WorkerGroup:
    return WorkerGroup.model_validate({
        "node_selector": {NODE_POOL_LABEL: pool}, "tolerations": [GPU_TOLERATION], **overrides})


class ServeAutoscaling(_Strict):
    """Ray Serve autoscaling for one engine deployment (autoscaling_config in serveConfigV2)."""

    min_replicas: int | None = Field(None, ge=0, description="Default: the pool's `replicas`.")
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float | None = Field(
        None, gt=0, description="Default: half the pool's max_ongoing_requests.")
    upscale_delay_s: float = Field(30, ge=0)
    downscale_delay_s: float = Field(600, ge=0)


class NetworkOptions(_Strict):
    """NIXL moves KV over UCX: RDMA (rc) between nodes, CUDA IPC/copy inside one."""

    rdma: bool = Field(True, description="Use InfiniBand/RoCE (adds UCX rc and IPC_LOCK).")
    ucx_tls: str | None = Field(None, description="Override UCX_TLS (default follows `rdma`).")
    ucx_net_devices: str | None = Field(None, description="UCX_NET_DEVICES, e.g. mlx5_0:1.")
    rdma_resources: dict[str, int] = Field(
        default_factory=dict, description="Device-plugin resources per engine pod, e.g. rdma/ib: 1.")
    extra_env: dict[str, str] = Field(default_factory=dict, description="More env on every Ray pod.")

    @property
    def transports(self) -> str:
        if self.ucx_tls:
            return self.ucx_tls
        return "rc,sm,self,cuda_copy,cuda_ipc,tcp" if self.rdma else "sm,self,cuda_copy,cuda_ipc,tcp"


class ModelStore(_Strict):
    """A shared volume at the same path on every pod: vLLM's NIXL handshake compares model
    paths, and trained decoders written by the RayJob are read from it by the RayService."""

    claim_name: str = "prefillshare-models"
    create: bool = Field(True, description="Render the PersistentVolumeClaim (else: it exists).")
    size_gib: int = Field(200, ge=1)
    storage_class: str | None = None
    access_mode: Literal["ReadWriteMany", "ReadOnlyMany", "ReadWriteOnce"] = "ReadWriteMany"
    mount_path: str = "/models"


class TrainingJob(_Strict):
    """The RayJob that runs `python -m training train` (one decoder per job)."""

    workers: WorkerGroup = Field(
        default_factory=lambda: gpu_group("train", min_workers=None, max_workers=8))
    max_failures: int = Field(1, ge=0, description="Ray Train in-run retries (--max-failures).")
    active_deadline_s: int = Field(24 * 3600, ge=60)
    ttl_after_finished_s: int = Field(3600, ge=0)


class ClusterConfig(_Strict):
    name: str = Field("prefillshare", description="RayService name (and prefix of the others).")
    image: str = Field(
        "prefillshare:0.1.0", description="An image with vLLM (GPU), Ray 2.60, NIXL and this repo.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list)
    ray_version: str = "2.60.0"
    head: HeadGroup = Field(default_factory=HeadGroup)
    worker_groups: dict[str, WorkerGroup] = Field(
        default_factory=lambda: {"prefill": gpu_group("prefill", max_workers=4),
                                 "decode": gpu_group("decode", max_workers=16)})
    prefill_group: str = Field("prefill", description="Group of every prefill deployment.")
    decode_group: str = Field("decode", description="Group of every decode deployment.")
    placement: dict[str, str] = Field(
        default_factory=dict, description="Serve deployment name -> worker group (overrides).")
    serve_autoscaling: ServeAutoscaling = Field(default_factory=ServeAutoscaling)
    autoscaling_overrides: dict[str, ServeAutoscaling] = Field(
        default_factory=dict, description="Serve deployment name -> its own autoscaling.")
    ray_autoscaler_idle_timeout_s: int = Field(600, ge=0)
    network: NetworkOptions = Field(default_factory=NetworkOptions)
    models: ModelStore = Field(default_factory=ModelStore)
    hf_token_secret: str | None = Field(
        "hf-token", description="Secret with key `token`, exposed as HF_TOKEN (optional).")
    api_keys_secret: str | None = Field(
        None, description="Secret with key `api-keys`, mounted read-only at /etc/prefillshare in "
        "every serving pod (the ingress may run on any): set the app's auth.keys_file to "
        "/etc/prefillshare/api-keys (docs/security.md).")
    training: TrainingJob = Field(default_factory=TrainingJob)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _DNS_LABEL.match(v):
            raise ValueError("name must be a DNS label (lowercase letters, digits, '-')")
        return v

    @model_validator(mode="after")
    def _groups_known(self) -> ClusterConfig:
        for group in self.worker_groups:
            if not _DNS_LABEL.match(group):
                raise ValueError(f"worker_groups: {group!r} is not a DNS label")
        wanted = {"prefill_group": self.prefill_group, "decode_group": self.decode_group,
                  **{f"placement.{d}": g for d, g in self.placement.items()}}
        for field, group in wanted.items():
            if group not in self.worker_groups:
                raise ValueError(f"{field}: no worker group {group!r} "
                                 f"(have {sorted(self.worker_groups)})")
        return self


def load_cluster_config(path: str | Path | None) -> ClusterConfig:
    if path is None:
        return ClusterConfig()
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"{p}: no such file") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML: {exc}") from None
    return ClusterConfig.model_validate(raw)
