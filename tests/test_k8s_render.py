"""`prefillshare render-k8s`: the committed k8s/ is exactly what config.yaml renders to; the
Serve config inside the RayService is config.yaml's app plus placement; engines are placed on
the node pools the cluster config names; bad configs fail with clear messages."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.config import AppConfig
from deployments.k8s.cluster import ClusterConfig, pool_resource
from deployments.k8s.placement import group_plans, place
from deployments.k8s.render import differences, main, render_paths
from deployments.plan import engine_pools
from deployments.serve_config import load_serve_file
from training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    return {p: yaml.safe_load(t) for p, t in render_paths(ROOT / "config.yaml").items()}


def _serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def _groups(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def test_committed_k8s_is_the_render_of_config_yaml(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    files = render_paths("config.yaml")
    for path, text in files.items():
        assert (ROOT / "k8s" / path).read_text() == text, f"k8s/{path}: run `prefillshare render-k8s`"
    assert differences(files, ROOT / "k8s") == []
    assert main(["config.yaml", "--out", "k8s", "--check"]) == 0


def test_check_reports_edited_and_stale_files(tmp_path, capsys):
    out = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", out)
    assert main([str(ROOT / "config.yaml"), "--out", str(out), "--check"]) == 0
    (out / "rayservice.yaml").write_text((out / "rayservice.yaml").read_text().replace("8265", "8266"))
    (out / "old.yaml").write_text("kind: Old\n")
    assert main([str(ROOT / "config.yaml"), "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "rayservice.yaml: differs" in err and "old.yaml: not rendered (stale)" in err


def _engine_pools(app: dict[str, Any]) -> list[dict[str, Any]]:
    """The pool sections that start engines (a LoRA role's own decode_pool starts none)."""
    pools = [*app["prefill_pools"].values(), *(r["decode_pool"] for r in app["roles"]
                                               if not r["lora_adapter"])]
    return pools + ([app["lora_pool"]] if app["lora_pool"] else [])


def test_serve_config_is_config_yaml_plus_placement(rendered):
    serve = _serve_config(rendered["rayservice.yaml"])
    original = yaml.safe_load((ROOT / "config.yaml").read_text())
    [app] = serve["applications"]
    [orig_app] = original["applications"]
    assert {k: v for k, v in app.items() if k not in ("args", "deployments")} == \
        {k: v for k, v in orig_app.items() if k != "args"}
    # Ray Serve's own schema accepts it, and the app's schema too (as the build task will).
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve)
    placed = AppConfig.model_validate(app["args"])
    # Remove what placement added: exactly config.yaml's app is left.
    stripped = placed.model_dump()
    for pool in _engine_pools(stripped):
        assert pool.pop("resources") and pool.pop("num_gpus") == 1
    expected = AppConfig.model_validate(orig_app["args"]).model_dump()
    for pool in _engine_pools(expected):
        del pool["resources"], pool["num_gpus"]
    assert stripped == expected
    assert serve["http_options"]["host"] == "0.0.0.0"


def test_each_engine_deployment_requests_its_groups_resource(rendered):
    rs = rendered["rayservice.yaml"]
    serve = _serve_config(rs)
    cfg = AppConfig.model_validate(serve["applications"][0]["args"])
    groups = _groups(rs)
    assert set(groups) == {"prefill", "decode"}
    for name, pool in engine_pools(cfg).items():
        [(resource, amount)] = pool.resources.items()
        group = "prefill" if name.startswith("prefill-") else "decode"
        assert (resource, amount) == (pool_resource(group), 1), name
        assert resource in groups[group]["resources"]  # only that group's pods offer it
        other = groups["decode" if group == "prefill" else "prefill"]
        assert resource not in other["resources"]
    for name, group in groups.items():
        pod = group["template"]["spec"]
        assert pod["nodeSelector"] == {"prefillshare/node-pool": name}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        [container] = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        env = {e["name"]: e for e in container["env"]}
        assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["PREFILLSHARE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert "rc" in env["UCX_TLS"]["value"].split(",")
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "12Gi"}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/api/local_raylet_healthz"


def test_head_runs_no_engines_and_autoscalers_are_on(rendered):
    rs = rendered["rayservice.yaml"]
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["num-gpus"] == "0"
    [container] = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "resources" not in head  # no pool resource: no engine can be placed here
    assert cluster["enableInTreeAutoscaling"] is True
    serve = _serve_config(rs)
    overrides = {d["name"]: d for d in serve["applications"][0]["deployments"]}
    assert set(overrides) == {"prefill-shared", "decode-lora"}  # four roles, one LoRA pool
    for d in overrides.values():
        assert d["num_replicas"] == "auto"
        assert d["autoscaling_config"]["min_replicas"] == 1
        assert d["autoscaling_config"]["target_ongoing_requests"] == 16  # half of 32
    # The decode group can hold every decode deployment at its max_replicas.
    decode = _groups(rs)["decode"]
    assert decode["maxReplicas"] >= overrides["decode-lora"]["autoscaling_config"]["max_replicas"]
    assert decode["replicas"] == decode["minReplicas"] == 1


def test_training_job_reads_its_config_map_and_writes_to_the_models_volume(rendered):
    job, cm = rendered["training/rayjob.yaml"], rendered["training/train-config.yaml"]
    [(key, text)] = cm["data"].items()
    cfg = TrainConfig.model_validate(yaml.safe_load(text))
    assert str(cfg.output_dir).startswith("/models/") and str(cfg.storage_dir).startswith("/models/")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volume = next(v for v in head["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert job["spec"]["entrypoint"].startswith(
        f"python -m training train --config {mount['mountPath']}/{key}")
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def _cluster(**kw: Any) -> ClusterConfig:
    return ClusterConfig.model_validate(kw)


def test_placement_overrides_and_capacity_checks():
    app = load_serve_file(ROOT / "config.yaml").app
    groups = {"prefill": {}, "decode": {"max_workers": 16}, "small": {"max_workers": 1}}
    cluster = _cluster(worker_groups=groups, placement={"decode-lora": "small"},
                       autoscaling_overrides={"decode-lora": {"max_replicas": 2}})
    with pytest.raises(ValueError, match="'small'.*2 engines.*max_workers is 1"):
        group_plans(place(app, cluster), cluster)
    groups["small"] = {"max_workers": 2}
    cluster = cluster.model_copy(update={"worker_groups": _cluster(worker_groups=groups).worker_groups})
    assert {g.name: g.deployments for g in group_plans(place(app, cluster), cluster)}["small"] == \
        ("decode-lora",)
    placed = {p.deployment: p.group for p in place(app, cluster)}
    assert placed == {"decode-lora": "small", "prefill-shared": "prefill"}
    with pytest.raises(ValueError, match="both prefill and decode"):
        place(app, _cluster(decode_group="prefill"))
    with pytest.raises(ValueError, match="no engine deployment named \\['decode-nobody'\\]"):
        place(app, _cluster(placement={"decode-nobody": "decode"}))
    with pytest.raises(ValueError, match="no worker group 'gpu'"):
        _cluster(prefill_group="gpu")
    with pytest.raises(ValueError, match="shm_gib"):
        _cluster(head={"memory_gib": 4, "shm_gib": 8})


def test_cli_errors_exit_2_with_the_field(tmp_path, capsys):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("worker_groups: {prefill: {gpus: 3, gpus_per_engine: 2}, decode: {}}\n")
    assert main([str(ROOT / "config.yaml"), "--cluster", str(bad), "--out", str(tmp_path)]) == 2
    assert "gpus (3) must be a multiple of gpus_per_engine (2)" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["--print-cluster-defaults"]) == 0
    assert ClusterConfig.model_validate(yaml.safe_load(capsys.readouterr().out)) == ClusterConfig()
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_writes_the_manifests(tmp_path):
    assert main([str(ROOT / "config.yaml"), "--out", str(tmp_path / "out")]) == 0
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.yaml"))
    assert written == ["models-pvc.yaml", "rayservice.yaml", "training/rayjob.yaml",
                       "training/train-config.yaml"]


def test_prefillshare_render_k8s_subcommand(monkeypatch, tmp_path):
    from deployments.cli import main as cli_main

    monkeypatch.chdir(ROOT)
    assert cli_main(["render-k8s", "config.yaml", "--out", "k8s", "--check"]) == 0
    assert cli_main(["render-k8s", "config.yaml", "--out", str(tmp_path), "--check"]) == 1
