"""`prefillshare roles list|add|remove`: change a running app's roles without a redeploy.

The ingress takes its roles as Serve user_config (router_service/role_table.py). This command
reads the app's deployed config from Ray's dashboard, changes only the ingress' user_config
and deploys that back: Serve sees the same code version and calls ``reconfigure`` on the
running ingress replicas, so no engine restarts and no request in flight is dropped. A LoRA
role's adapter is checked here first (files, rank against the pool's, trained on the served
base) and again by each ingress replica, which keeps serving the other roles if it refuses one.

A change made here lives in the deployed config only: put it in config.yaml to keep it over
the next `prefillshare deploy` (which changes the app's args, and so restarts the app).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any

import httpx

from contract.config import AppConfig, RoleConfig
from deployments.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE

INGRESS = "ingress"  # router_service.ingress.INGRESS_DEPLOYMENT (no Ray import here)


def app_config_of(details: dict[str, Any], app: str) -> dict[str, Any]:
    """The deployed config of ``app`` from GET /api/serve/applications/."""
    found = (details.get("applications") or {}).get(app)
    if not found or not found.get("deployed_app_config"):
        raise LookupError(f"no application {app!r} deployed (have "
                          f"{sorted(details.get('applications') or {})})")
    return found["deployed_app_config"]


def current_roles(app_config: dict[str, Any]) -> list[dict[str, Any]]:
    """The roles the ingress serves: its user_config override, else the app's args."""
    for d in app_config.get("deployments") or []:
        if d.get("name") == INGRESS and isinstance(d.get("user_config"), dict):
            return list(d["user_config"].get("roles") or [])
    return list((app_config.get("args") or {}).get("roles") or [])


def with_roles(details: dict[str, Any], app: str, roles: list[dict[str, Any]]) -> dict[str, Any]:
    """The PUT /api/serve/applications/ body: every deployed app as it is, ``app``'s ingress
    with ``roles`` as its user_config. The app's args stay as they are (a change there is a new
    code version: Serve would restart every deployment)."""
    apps = []
    for name, found in (details.get("applications") or {}).items():
        config = copy.deepcopy(found["deployed_app_config"])
        if name == app:
            deployments = [d for d in config.get("deployments") or [] if d.get("name") != INGRESS]
            ingress = next((d for d in config.get("deployments") or []
                            if d.get("name") == INGRESS), {"name": INGRESS})
            deployments.append({**ingress, "user_config": {"roles": roles}})
            config["deployments"] = deployments
        apps.append(config)
    body: dict[str, Any] = {"applications": apps}
    for key in ("proxy_location", "http_options"):
        if details.get(key) is not None:
            body[key] = details[key]
    return body


def checked_role(app_config: dict[str, Any], role: dict[str, Any]) -> dict[str, Any]:
    """The role as the ingress will get it (adapter path made absolute), or ValueError with
    the reason: the same checks each ingress replica runs (router_service/role_table.py),
    against what this app's config runs."""
    from contract.roles import prefill_deployment_name
    from deployments.plan import engine_pools
    from router_service.role_table import ServingFacts, resolve_roles
    from vllm_runtime.model_assets import resolve_model

    cfg = AppConfig.model_validate(app_config.get("args") or {})
    parsed = RoleConfig.model_validate(role)
    prefill = frozenset(prefill_deployment_name(name) for name in cfg.prefill_pools)
    facts = ServingFacts(resolve_model(cfg.base_model), prefill,
                         frozenset(engine_pools(cfg)) - prefill,
                         cfg.lora_pool.max_lora_rank if cfg.lora_pool else None)
    served, rejected = resolve_roles({"roles": [parsed.model_dump(mode="json")]}, facts)
    if rejected:
        raise ValueError(rejected[0].reason)
    if served[0].lora_path is not None:
        parsed = parsed.model_copy(update={"lora_adapter": served[0].lora_path})
    return parsed.model_dump(mode="json", exclude_defaults=True)


def _details(address: str, headers: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(f"{address}/api/serve/applications/", headers=headers, timeout=30)
    r.raise_for_status()
    return r.json()


def main(argv: list[str] | None = None) -> int:
    from deployments.cli import _auth_headers, wait_until_running

    p = argparse.ArgumentParser(prog="prefillshare roles", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default="http://127.0.0.1:8265", help="Ray dashboard")
    p.add_argument("--app", default="prefillshare", help="the Serve application's name")
    p.add_argument("--token-file", default="runs/local/ray_auth_token",
                   help="the cluster's Ray auth token, as `up` wrote it (empty string: no auth)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for RUNNING")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="print the roles the ingress serves")
    add = sub.add_parser("add", help="add a LoRA role, or replace a role of that name")
    add.add_argument("name")
    add.add_argument("--adapter", required=True, help="PEFT adapter folder (trained on the base)")
    add.add_argument("--instructions", default=None, help="text placed after the shared context")
    add.add_argument("--default-max-tokens", type=int, default=None)
    remove = sub.add_parser("remove", help="stop serving a role (requests in flight finish)")
    remove.add_argument("name")
    args = p.parse_args(argv)
    try:
        headers = _auth_headers(args.token_file)
    except OSError as exc:
        print(f"prefillshare roles: cannot read the Ray auth token: {exc} "
              "(--token-file '' for a cluster without auth)", file=sys.stderr)
        return EXIT_USAGE
    try:
        details = _details(args.address, headers)
        app_config = app_config_of(details, args.app)
    except (httpx.HTTPError, LookupError) as exc:
        print(f"prefillshare roles: {exc}", file=sys.stderr)
        return EXIT_FAILED
    roles = current_roles(app_config)
    if args.action == "list":
        print(json.dumps(roles, indent=2))
        return EXIT_OK
    names = [r.get("name") for r in roles]
    if args.action == "remove":
        if args.name not in names:
            print(f"prefillshare roles: no role {args.name!r} (have {names})", file=sys.stderr)
            return EXIT_USAGE
        if names == [args.name]:
            print("prefillshare roles: the app must keep at least one role", file=sys.stderr)
            return EXIT_USAGE
        roles = [r for r in roles if r.get("name") != args.name]
    else:
        new = {"name": args.name, "lora_adapter": args.adapter}
        if args.instructions is not None:
            new["instructions"] = args.instructions
        if args.default_max_tokens is not None:
            new["default_max_tokens"] = args.default_max_tokens
        try:
            new = checked_role(app_config, new)
        except ValueError as exc:  # pydantic's ValidationError and AdapterRejected included
            print(f"prefillshare roles: {exc}", file=sys.stderr)
            return EXIT_USAGE
        roles = [r for r in roles if r.get("name") != args.name] + [new]
    try:
        r = httpx.put(f"{args.address}/api/serve/applications/", headers=headers, timeout=60,
                      json=with_roles(details, args.app, roles))
        r.raise_for_status()
        code = wait_until_running(args.address, args.app, headers, args.timeout)
    except httpx.HTTPError as exc:
        print(f"prefillshare roles: the deploy failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if code == EXIT_OK:
        print(f"[prefillshare] roles now: {[r['name'] for r in roles]} "
              "(each ingress replica lists what it serves and refused at GET /admin/roles)")
    return code
