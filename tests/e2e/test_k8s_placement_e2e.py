"""The KubeRay placement, run for real on one box: a Ray cluster of several nodes on 127.0.0.1,
each worker node advertising the Ray resources that the rendered RayService gives its worker
group, and the app deployed with the rendered serveConfigV2 args. Every engine replica must
land on its group's node, and a P/D request must move KV from the prefill node to the decode
node (the decode engine's NIXL counters).

Tiny models, CPU pools (gpus 0): the same code path as GPU pools, minus num_gpus."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.running_app import APP, running_app, tiny_engine, tiny_models
from deployments.k8s.cluster import ClusterConfig
from deployments.k8s.render import DEFAULT_TRAIN_CONFIG, render
from deployments.serve_config import load_serve_file

pytestmark = pytest.mark.slow

CPU_POOL = {"gpus": 0, "gpus_per_engine": 0, "engines_per_worker": 1, "max_workers": 1}
CLUSTER = {
    "worker_groups": {"prefill": CPU_POOL, "decode": CPU_POOL, "decode-critic": CPU_POOL},
    "placement": {"decode-critic": "decode-critic"},
    "serve_autoscaling": {"max_replicas": 1},
}


def _rendered(tmp: Path) -> dict[str, Any]:
    base, decoder = tiny_models()
    engine = tiny_engine()
    serve = {"applications": [{
        "name": APP, "route_prefix": "/", "import_path": "deployments.app:build_app",
        "args": {"base_model": base, "prefill_pools": {"shared": {"engine": engine}},
                 "roles": [{"name": "planner", "decoder": decoder, "decode_pool": {"engine": engine}},
                           {"name": "critic", "decoder": decoder, "decode_pool": {"engine": engine}}]},
    }]}
    (tmp / "config.yaml").write_text(yaml.safe_dump(serve))
    files = render(load_serve_file(tmp / "config.yaml"), ClusterConfig.model_validate(CLUSTER),
                   yaml.safe_load(DEFAULT_TRAIN_CONFIG.read_text()), "config.yaml")
    return yaml.safe_load(files["rayservice.yaml"])


@pytest.fixture(scope="module")
def placed(tmp_path_factory) -> Iterator[tuple[Any, dict[str, str], dict[str, Any]]]:
    from ray.cluster_utils import Cluster

    rayservice = _rendered(tmp_path_factory.mktemp("k8s"))
    groups = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    args = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]
    # Ray's socket paths live under its temp dir and AF_UNIX paths stop at 107 bytes; RAY_TMPDIR
    # also keeps the cluster's address file out of the shared /tmp/ray.
    temp = tempfile.mkdtemp(prefix="psk-", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "VLLM_HOST_IP",
                                            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    os.environ.update(RAY_TMPDIR=temp, VLLM_HOST_IP="127.0.0.1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    node_args = {"node_ip_address": "127.0.0.1", "include_dashboard": False,
                 "object_store_memory": 80 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "num_cpus": 1})
    try:
        nodes = {}
        for group in groups:  # one node per worker group, offering what its pods offer
            resources = {k: float(v) for k, v in group["resources"].items()}
            nodes[group["groupName"]] = cluster.add_node(**node_args, num_cpus=1,
                                                         resources=resources).node_id
        with running_app(args, ray_address=cluster.address) as app:
            yield app, nodes, args
    finally:
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp, ignore_errors=True)


def _replica_nodes(deployment: str) -> set[str]:
    import ray

    actors = ray._private.state.actors()  # from the GCS; needs no dashboard
    return {a["Address"]["NodeID"] for a in actors.values()
            if a["State"] == "ALIVE" and a["ActorClassName"] == f"ServeReplica:{APP}:{deployment}"}


def test_replicas_land_on_the_node_pools_the_config_names(placed):
    _, nodes, args = placed
    assert args["prefill_pools"]["shared"]["resources"] == {"nodepool_prefill": 1}
    assert _replica_nodes("prefill-shared") == {nodes["prefill"]}
    assert _replica_nodes("decode-planner") == {nodes["decode"]}
    assert _replica_nodes("decode-critic") == {nodes["decode-critic"]}
    assert len(set(nodes.values())) == 3


@pytest.mark.parametrize("role", ["planner", "critic"])
def test_kv_moves_from_the_prefill_node_to_the_decode_node(placed, role):
    app, nodes, _ = placed
    decode = f"decode-{role}"
    before = app.handle(decode).stats.remote().result()
    prompt = list(range(1000, 1000 + 300))
    ids, _, pre = app.greedy_pd("prefill-shared", decode, prompt, max_tokens=4)
    assert len(ids) == 4
    after = app.handle(decode).stats.remote().result()
    assert after["kv_transfers"] > before["kv_transfers"]
    # 300 prompt tokens at block size 128: at least the two full blocks came over NIXL.
    assert after["kv_bytes"] - before["kv_bytes"] > 0
    assert pre.kv_transfer_params["remote_engine_id"].startswith("prefill-shared")
