"""The layer rules of docs/architecture.md, read from the source with ast (every import,
also the lazy ones inside functions): a package imports only packages of lower layers, so
there is no cycle between top-level packages; the product never imports bench/ or tests/;
`prefillshare validate` runs without Ray or vLLM."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower numbers sit lower: a package may import its own modules and any lower layer.
LAYERS = {
    "contract": 0,  # config schema, wire protocol, role shape: imports nothing of ours
    "routing": 1,  # routing policies and Serve's request router adapter
    "vllm_runtime": 1,  # engine hosting shared by both pools, model assets, Ray on loopback
    "prefill_service": 2,
    "decode_service": 2,
    "router_service": 2,  # the ingress
    "training": 2,
    "observability": 2,
    "deployments": 3,  # app builder, plan, CLI, k8s rendering
}
NEVER_IMPORTED = {"bench", "tests"}  # harnesses, fakes, simulators: outside the product


def imported_packages(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str, source: str) -> list[str]:
    mine = LAYERS[package]
    out = []
    for other in sorted(imported_packages(source)):
        if other in NEVER_IMPORTED:
            out.append(f"{package} imports {other} (test and bench code stay out of the product)")
        elif other in LAYERS and other != package and LAYERS[other] >= mine:
            out.append(f"{package} (layer {mine}) imports {other} (layer {LAYERS[other]})")
    return out


def test_every_product_module_keeps_the_layer_rules() -> None:
    found = []
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += [f"{path.relative_to(ROOT)}: {v}" for v in violations(package, path.read_text())]
    assert not found, "\n".join(found)


def test_every_top_level_package_has_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - set(LAYERS) - NEVER_IMPORTED == set()


@pytest.mark.parametrize("package, source, expected", [
    ("decode_service", "from router_service.backend import GenerationRequest", "router_service"),
    ("vllm_runtime", "def f():\n    from deployments.plan import make_plan", "deployments"),
    ("contract", "import routing.registry", "routing"),
    ("router_service", "from bench.fake_backend import FakeBackend", "bench"),
    ("prefill_service", "from decode_service.server import DecodeServer", "decode_service"),
])
def test_the_checker_catches_a_broken_rule(package: str, source: str, expected: str) -> None:
    [problem] = violations(package, source)
    assert expected in problem


def test_the_checker_allows_downward_imports() -> None:
    assert violations("deployments", "from router_service.ingress import Ingress") == []
    assert violations("router_service", "from contract.wire import ServingError") == []


def test_validate_imports_no_ray_and_no_vllm(tmp_path: Path) -> None:
    """`prefillshare validate` on a config of tiny models (nothing to convert) loads neither."""
    from vllm_runtime.model_assets import cache_dir, tiny_llama_folder

    model = tiny_llama_folder(cache_dir() / "tiny-layering", seed=3)
    config = tmp_path / "config.yaml"
    config.write_text(
        "applications:\n  - name: app\n    import_path: deployments.app:build_app\n"
        f"    args:\n      base_model: {model}\n      roles: [{{name: planner}}]\n")
    probe = ("import sys\nfrom deployments.cli import main\n"
             f"code = main(['validate', {str(config)!r}])\n"
             "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'vllm'})\n"
             "print('LOADED', loaded, code)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert "LOADED [] 0" in out.stdout, out.stdout + out.stderr
