"""`prefillshare`: the command line (console script; also `python -m deployments`).

  prefillshare validate config.yaml   check the config (and the models' KV compatibility)
  prefillshare prepare  config.yaml   convert/resolve every model the config names
  prefillshare up       config.yaml   start a local Ray head on 127.0.0.1, `serve deploy` the
                                      config, print the endpoints, stop everything on Ctrl-C
  prefillshare status                 the Serve application's status on a running cluster

Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("prefillshare")


def _load(path: str) -> Any:
    from deployments.serve_config import load_serve_file

    return load_serve_file(path)


def cmd_validate(args: argparse.Namespace) -> int:
    from deployments.plan import make_plan

    sf = _load(args.config)
    plan = make_plan(sf.app)  # resolves models and checks KV compatibility
    print(f"{sf.path}: ok: {len(plan.prefill)} prefill pool(s), {len(plan.decode)} decode "
          f"pool(s), roles {[r.role for r in plan.roles]}")
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


def cmd_status(args: argparse.Namespace) -> int:
    headers = {}
    if args.token_file:
        headers["Authorization"] = f"Bearer {Path(args.token_file).read_text().strip()}"
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
        last = ""
        while True:
            status, message = app_status(head.dashboard_url, sf.app_name, head.auth_headers())
            state = f"{status} {message}"[:300]
            if state != last:  # print changes only
                print(f"[prefillshare] {time.monotonic() - t0:5.0f}s {state}", flush=True)
                last = state
            if status == "RUNNING":
                break
            if status == "DEPLOY_FAILED":
                print(f"[prefillshare] deploy failed: {message}", file=sys.stderr)
                return EXIT_FAILED
            time.sleep(3)
        base = f"http://{sf.http_host}:{sf.http_port}{sf.route_prefix.rstrip('/')}"
        print(f"[prefillshare] ready in {time.monotonic() - t0:.0f}s. Endpoints:")
        print(f"  GET  {base}/v1/models")
        print(f"  POST {base}/v1/chat/completions   (model: one of the roles)")
        print(f"  POST {base}/v1/completions")
        for r in plan.roles:
            print(f"  POST {base}/roles/{r.role}/v1/chat/completions")
        print(f"  GET  {base}/stats   (prefix-cache and KV-transfer counters)")
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
    up = sub.add_parser("up", help="run the app on a local Ray cluster (127.0.0.1)",
                        description="Start Ray on 127.0.0.1, serve deploy CONFIG, wait for it, "
                        "print the endpoints; Ctrl-C stops only what this command started.")
    up.add_argument("config", nargs="?", default="config.yaml")
    up.add_argument("--ray-port", type=int, default=6390)
    up.add_argument("--dashboard-port", type=int, default=8265)
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
    for name, (_, text) in DELEGATED.items():
        # Listed here for --help; main() hands the rest of the command line to the module.
        sub.add_parser(name, help=text, description=text)
    return p


# Subcommands whose modules parse their own options (`prefillshare NAME --help`).
DELEGATED = {
    "fault": ("bench.fault_run", "fault run under load: kill replicas, fail KV pulls"),
    "soak": ("bench.soak", "long moderate load; memory per replica must stay bounded"),
}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib

        return int(importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:]))
    args = build_parser().parse_args(argv)
    from deployments.app import ConfigError
    from deployments.kv_compat import KvIncompatible

    try:
        return int(args.fn(args))
    except (ConfigError, KvIncompatible, ValueError, FileNotFoundError) as exc:
        print(f"prefillshare: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except subprocess.CalledProcessError as exc:
        print(f"prefillshare: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RuntimeError as exc:
        print(f"prefillshare: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
