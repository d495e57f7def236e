"""`prefillshare render-k8s CONFIG --out k8s/`: KubeRay manifests from the app's config.yaml.

Writes (kubectl apply -f OUT/ deploys serving; OUT/training/ starts one training run):
  OUT/models-pvc.yaml              the shared models volume (unless models.create is false)
  OUT/rayservice.yaml              RayService: head (no engines), one worker group per node pool
  OUT/training/train-config.yaml   ConfigMap with the training YAML
  OUT/training/rayjob.yaml         RayJob: `python -m training train` on the train node pool

The cluster side (image, node pools, GPUs, autoscaling ...) comes from --cluster (YAML of
deployments.k8s.cluster.ClusterConfig; --print-cluster-defaults shows every field).
--check compares instead of writing (exit 1 when OUT differs). Exit codes: 0 ok, 1 OUT differs,
2 bad config or usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from contract.config import format_validation_error
from deployments.exit_codes import EXIT_FAILED as EXIT_DIFFERS
from deployments.exit_codes import EXIT_OK, EXIT_USAGE
from deployments.k8s.cluster import ClusterConfig, load_cluster_config
from deployments.k8s.manifests import (
    cluster_train_config,
    models_claim,
    ray_job,
    ray_service,
    train_config_map,
)
from deployments.k8s.placement import group_plans, place, serve_config_v2
from deployments.serve_config import ServeFile, load_serve_file

DEFAULT_TRAIN_CONFIG = Path(__file__).resolve().parents[2] / "training/configs/study_arith_prefillshare.yaml"


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2, the training YAML) as readable `|` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def to_yaml(obj: dict[str, Any], source: str) -> str:
    header = (f"# Rendered by `prefillshare render-k8s {source}`; do not edit: change the config "
              "and render again.\n")
    return header + yaml.dump(obj, Dumper=_BlockDumper, sort_keys=False, width=100)


def render(sf: ServeFile, cluster: ClusterConfig, train_raw: dict[str, Any],
           source: str) -> dict[str, str]:
    """Relative path -> file text, for every manifest."""
    placed = place(sf.app, cluster)
    groups = group_plans(placed, cluster)
    serve = serve_config_v2(sf, placed, cluster)
    train_cfg = cluster_train_config(train_raw, cluster)
    files: dict[str, dict[str, Any]] = {}
    if cluster.models.create:
        files["models-pvc.yaml"] = models_claim(cluster)
    files["rayservice.yaml"] = ray_service(cluster, groups, serve)
    files["training/train-config.yaml"] = train_config_map(cluster, train_cfg)
    files["training/rayjob.yaml"] = ray_job(cluster, train_cfg)
    return {path: to_yaml(obj, source) for path, obj in files.items()}


def render_paths(config: str | Path, cluster_path: str | Path | None = None,
                 train_config: str | Path | None = None) -> dict[str, str]:
    sf = load_serve_file(config)
    cluster = load_cluster_config(cluster_path)
    train_path = Path(train_config) if train_config else DEFAULT_TRAIN_CONFIG
    try:
        train_raw = yaml.safe_load(train_path.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"{train_path}: no such file") from None
    # File names only: the same inputs render the same bytes wherever they are run from.
    source = " ".join([Path(config).name,
                       *([f"--cluster {Path(cluster_path).name}"] if cluster_path else []),
                       *([f"--train-config {Path(train_config).name}"] if train_config else [])])
    return render(sf, cluster, train_raw, source)


def differences(files: dict[str, str], out: Path) -> list[str]:
    """What --check reports: files that differ, are missing, or are stale in OUT."""
    problems = [f"{out / p}: differs" if (out / p).exists() else f"{out / p}: missing"
                for p, text in files.items()
                if not (out / p).exists() or (out / p).read_text() != text]
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*.yaml")} if out.exists() else set()
    problems += [f"{out / p}: not rendered (stale)" for p in sorted(on_disk - set(files))]
    return problems


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefillshare render-k8s", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default="config.yaml", help="the Serve config (config.yaml)")
    p.add_argument("--out", default="k8s", help="output folder (default: k8s)")
    p.add_argument("--cluster", default=None, help="cluster knobs YAML (default: built-in)")
    p.add_argument("--train-config", default=None,
                   help=f"training YAML for the RayJob (default: {DEFAULT_TRAIN_CONFIG.name})")
    p.add_argument("--check", action="store_true", help="compare with OUT, write nothing")
    p.add_argument("--print-cluster-defaults", action="store_true",
                   help="print the default cluster knobs as YAML and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_cluster_defaults:
        print(yaml.safe_dump(ClusterConfig().model_dump(mode="json"), sort_keys=False), end="")
        return EXIT_OK
    try:
        files = render_paths(args.config, args.cluster, args.train_config)
    except ValidationError as exc:
        print(f"render-k8s: {format_validation_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, KeyError) as exc:
        print(f"render-k8s: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    if args.check:
        problems = differences(files, out)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(f"render-k8s: {out} is out of date; run without --check", file=sys.stderr)
            return EXIT_DIFFERS
        print(f"{out}: up to date ({len(files)} manifests)")
        return EXIT_OK
    for path, text in files.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {target}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
