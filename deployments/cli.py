"""`prefillshare`: the command line (console script; also `python -m deployments`).

  prefillshare validate config.yaml   check the config (and the models' KV compatibility)
  prefillshare prepare  config.yaml   convert/resolve every model the config names
  prefillshare up       config.yaml   start a local Ray head on 127.0.0.1, `serve deploy` the
                                      config, print the endpoints, stop everything on Ctrl-C
  prefillshare status                 the Serve application's status on a running cluster
  prefillshare deploy   config.yaml   `serve deploy` to a running cluster, wait until RUNNING
  prefillshare roles list|add|remove  change a running app's roles (LoRA adapters), no restart
  prefillshare train | eval | study   decoder training, evaluation, method comparison
  prefillshare bench run|compare|report|pd|routing|accuracy|start-cost   load, comparisons
  prefillshare render-k8s config.yaml KubeRay manifests (RayService, RayJob) into k8s/
  prefillshare push-dashboard         the Grafana dashboard and its Prometheus data source
  prefillshare fault | soak ...       reliability runs under load (fault injection, soak)

`prefillshare COMMAND --help` for each. Exit codes: 0 ok, 1 runtime failure, 2 bad config or
usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from deployments import cli_delegate
from deployments.cli_delegate import Delegated
from deployments.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE

log = logging.getLogger("prefillshare")


def _load(path: str) -> Any:
    from deployments.serve_config import load_serve_file

    return load_serve_file(path)


def cmd_validate(args: argparse.Namespace) -> int:
    from deployments.plan import make_plan

    sf = _load(args.config)
    plan = make_plan(sf.app)  # resolves models and checks KV compatibility
    print(f"{sf.path}: ok: {len(plan.prefill)} prefill pool(s), {len(plan.decode)} decode "
          f"pool(s), roles {[r.name for r in plan.roles]}")
    return EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    return cmd_validate(args)  # planning converts and caches every model it names


def app_status(dashboard: str, app_name: str,
               headers: dict[str, str] | None = None) -> tuple[str, str]:
    r = httpx.get(f"{dashboard}/api/serve/applications/", headers=headers, timeout=10)
    r.raise_for_status()
    app = (r.json().get("applications") or {}).get(app_name)
    if app is None:
        return "NOT_STARTED", ""
    detail = "; ".join(f"{name}: {d.get('status')} {d.get('message', '')}".strip()
                       for name, d in (app.get("deployments") or {}).items())
    return str(app.get("status")), app.get("message") or detail


def _auth_headers(token_file: str) -> dict[str, str]:
    if not token_file:
        return {}
    return {"Authorization": f"Bearer {Path(token_file).read_text().strip()}"}


def wait_until_running(dashboard: str, app_name: str, headers: dict[str, str],
                       timeout_s: float | None = None) -> int:
    """Prints each change of the app's status; EXIT_OK once RUNNING, EXIT_FAILED on
    DEPLOY_FAILED or after ``timeout_s``."""
    t0 = time.monotonic()
    last = ""
    while True:
        status, message = app_status(dashboard, app_name, headers)
        state = f"{status} {message}"[:300]
        if state != last:  # print changes only
            print(f"[prefillshare] {time.monotonic() - t0:5.0f}s {state}", flush=True)
            last = state
        if status == "RUNNING":
            return EXIT_OK
        if status == "DEPLOY_FAILED":
            print(f"[prefillshare] deploy failed: {message}", file=sys.stderr)
            return EXIT_FAILED
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            print(f"[prefillshare] not RUNNING after {timeout_s:.0f}s: {state}", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(3)


def cmd_deploy(args: argparse.Namespace) -> int:
    sf = _load(args.config)  # the schema check, before anything reaches the cluster
    headers = _auth_headers(args.token_file)
    env = dict(os.environ)
    if args.token_file:
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(Path(args.token_file))})
    print(f"[prefillshare] serve deploy {sf.path} -a {args.address} ...", flush=True)
    subprocess.run([str(Path(sys.executable).with_name("serve")), "deploy", str(sf.path),
                    "-a", args.address], check=True, env=env)
    try:
        return wait_until_running(args.address, sf.app_name, headers, args.timeout)
    except httpx.HTTPError as exc:
        print(f"prefillshare: lost the cluster at {args.address}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    headers = _auth_headers(args.token_file)
    try:
        status, message = app_status(args.address, args.app, headers)
    except httpx.HTTPError as exc:
        print(f"no cluster at {args.address}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps({"application": args.app, "status": status, "message": message}, indent=2))
    return EXIT_OK if status == "RUNNING" else EXIT_FAILED


def cmd_up(args: argparse.Namespace) -> int:
    from deployments.local_cluster import LocalRayHead
    from deployments.plan import make_plan

    sf = _load(args.config)
    print("[prefillshare] preparing models (the first run converts SmolLM2 once) ...", flush=True)
    plan = make_plan(sf.app)
    run_dir = Path(args.run_dir)
    head = LocalRayHead(dashboard_port=args.dashboard_port, gcs_port=args.ray_port,
                        metrics_export_port=args.metrics_export_port,
                        temp_dir=Path(args.ray_temp_dir))
    def on_sigterm(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # A shell that starts us in the background ignores SIGINT for us: take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    try:
        print(f"[prefillshare] starting Ray on 127.0.0.1 (log: {run_dir / 'ray.log'}) ...", flush=True)
        head.start(run_dir / "ray.log")
        serve_bin = str(Path(sys.executable).with_name("serve"))
        print(f"[prefillshare] serve deploy {sf.path} ...", flush=True)
        subprocess.run([serve_bin, "deploy", str(sf.path), "-a", head.dashboard_url],
                       check=True, env=head.env())
        if wait_until_running(head.dashboard_url, sf.app_name, head.auth_headers()) != EXIT_OK:
            return EXIT_FAILED
        base = f"http://{sf.http_host}:{sf.http_port}{sf.route_prefix.rstrip('/')}"
        print(f"[prefillshare] ready in {time.monotonic() - t0:.0f}s. Endpoints:")
        print(f"  GET  {base}/v1/models")
        print(f"  POST {base}/v1/chat/completions   (model: one of the roles)")
        print(f"  POST {base}/v1/completions")
        for r in plan.roles:
            print(f"  POST {base}/roles/{r.name}/v1/chat/completions")
        print(f"  GET  {base}/stats   (prefix-cache and KV-transfer counters)")
        print(f"  GET  http://127.0.0.1:{args.metrics_export_port}/metrics   (Ray's Prometheus "
              "exporter: docs/operations.md)")
        print("[prefillshare] Ctrl-C stops the app and the Ray processes started here.", flush=True)
        if args.exit_when_ready:
            return EXIT_OK
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        print("[prefillshare] stopping ...", flush=True)
        if head.proc is not None and head.proc.poll() is None:
            subprocess.run([str(Path(sys.executable).with_name("serve")), "shutdown", "-y",
                            "-a", head.dashboard_url], env=head.env(), timeout=120,
                           check=False, capture_output=True)
        head.stop()
        print("[prefillshare] stopped.", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefillshare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, text in (("validate", cmd_validate, "check a config file"),
                           ("prepare", cmd_prepare, "convert and cache the models a config names")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("config", nargs="?", default="config.yaml")
        s.set_defaults(fn=fn)
    up = sub.add_parser("up", aliases=["serve"],
                        help="run the app on a local Ray cluster (127.0.0.1)",
                        description="Start Ray on 127.0.0.1, serve deploy CONFIG, wait for it, "
                        "print the endpoints; Ctrl-C stops only what this command started.")
    up.add_argument("config", nargs="?", default="config.yaml")
    up.add_argument("--ray-port", type=int, default=6390)
    up.add_argument("--dashboard-port", type=int, default=8265)
    up.add_argument("--metrics-export-port", type=int, default=8080,
                    help="Ray's Prometheus exporter (127.0.0.1 only)")
    up.add_argument("--ray-temp-dir", default="/tmp/prefillshare-ray")
    up.add_argument("--run-dir", default="runs/local", help="where logs go")
    up.add_argument("--exit-when-ready", action="store_true",
                    help="stop everything once the app is RUNNING (a smoke check)")
    up.set_defaults(fn=cmd_up)
    st = sub.add_parser("status", help="status of the app on a running cluster")
    st.add_argument("--address", default="http://127.0.0.1:8265")
    st.add_argument("--app", default="prefillshare")
    st.add_argument("--token-file", default="runs/local/ray_auth_token",
                    help="the Ray auth token `up` wrote (empty string: no auth)")
    st.set_defaults(fn=cmd_status)
    dep = sub.add_parser("deploy", help="serve deploy a config to a running Ray cluster",
                         description="`serve deploy CONFIG` to the cluster at --address, then "
                         "wait until the app is RUNNING (exit 0) or fails (exit 1).")
    dep.add_argument("config", nargs="?", default="config.yaml")
    dep.add_argument("--address", default="http://127.0.0.1:8265", help="the Ray dashboard")
    dep.add_argument("--token-file", default="runs/local/ray_auth_token",
                     help="the cluster's Ray auth token (empty string: no auth)")
    dep.add_argument("--timeout", type=float, default=1800, help="seconds to wait for RUNNING")
    dep.set_defaults(fn=cmd_deploy)
    cli_delegate.add_parsers(sub, DELEGATED, GROUPS)
    return p


# Subcommands whose modules parse their own options (`prefillshare NAME --help`).
DELEGATED = {
    "train": Delegated("training.__main__", "fine-tune a role's decoder (python -m training train)",
                       ("train",)),
    "eval": Delegated("training.__main__", "score decoders across the KV boundary "
                      "(python -m training eval)", ("eval",)),
    "study": Delegated("training.__main__", "paired accuracy study of training methods: lr "
                       "grid, seeds, lr chosen on validation (python -m training study)",
                       ("study",)),
    "render-k8s": Delegated("deployments.k8s.render",
                            "render the KubeRay manifests (RayService, RayJob) from a config"),
    "push-dashboard": Delegated("observability.grafana_push",
                                "push the Grafana dashboard and its Prometheus data source"),
    "roles": Delegated("deployments.roles_cli",
                       "add, replace or remove a LoRA role on a running app (no restart)"),
    "fault": Delegated("bench.fault_run", "fault run under load: kill replicas, fail KV pulls"),
    "soak": Delegated("bench.soak", "long load; memory per replica must stay bounded (with "
                      "admission limits: a memory-pressure run)"),
}
GROUPS = {
    "bench": {
        "run": Delegated("bench.run", "replay a multi-agent workload against a running app"),
        "compare": Delegated("bench.compare", "PrefillShare vs the per-model baseline, here"),
        "report": Delegated("bench.v2_report", "Benchmark v2's tables and plots from a sweep's "
                            "raw rows (into docs/benchmarks.md)"),
        "pd": Delegated("bench.pd_single_request", "single-request P/D timing, stage by stage"),
        "routing": Delegated("bench.routing_policies",
                             "prefill routing policies on real engines, one policy per run"),
        "accuracy": Delegated("bench.served_accuracy",
                              "per-role held-out accuracy through a running app's OpenAI API"),
        "start-cost": Delegated("bench.start_cost",
                                "time to RUNNING and memory of `prefillshare up CONFIG`"),
    },
}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    delegated = cli_delegate.dispatch(argv, DELEGATED, GROUPS)
    if delegated is not None:
        return delegated
    args = build_parser().parse_args(argv)
    from contract.config import ConfigError
    from deployments.kv_compat import KvIncompatible

    try:
        return int(args.fn(args))
    except (ConfigError, KvIncompatible, ValueError, FileNotFoundError) as exc:
        print(f"prefillshare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except subprocess.CalledProcessError as exc:
        print(f"prefillshare: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RuntimeError as exc:
        print(f"prefillshare: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
