"""Push the PrefillShare dashboard and its Prometheus data source to Grafana, idempotently:
run it twice and Grafana holds one data source (updated in place, found by its uid) and one
dashboard (overwritten by its uid, version + 1). Uses grafana-client; runs on your machine.

  prefillshare push-dashboard --grafana-url http://grafana:3000 --prometheus-url http://prometheus:9090

The token comes from $GRAFANA_TOKEN or --token-file (never a flag: flags show in `ps`);
user:password in the URL works too. Exit codes: 0 pushed, 1 Grafana refused or is
unreachable, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from observability.dashboard import DASHBOARD_TITLE, DASHBOARD_UID, DATASOURCE_UID, build_dashboard

DATASOURCE_NAME = "PrefillShare Prometheus"


@dataclass(frozen=True)
class PushResult:
    datasource: str  # "created" or "updated"
    dashboard_version: int
    dashboard_url: str


def datasource_payload(prometheus_url: str, uid: str = DATASOURCE_UID,
                       name: str = DATASOURCE_NAME) -> dict[str, Any]:
    # timeInterval: Ray's exporter refreshes about every 10 s, so a shorter step shows steps.
    return {"uid": uid, "name": name, "type": "prometheus", "access": "proxy",
            "url": prometheus_url, "isDefault": False,
            "jsonData": {"httpMethod": "POST", "timeInterval": "15s"}}


def push(api: Any, prometheus_url: str, *, datasource_uid: str = DATASOURCE_UID,
         folder_uid: str | None = None) -> PushResult:
    """``api`` is a grafana_client.GrafanaApi."""
    from grafana_client.client import GrafanaClientError

    payload = datasource_payload(prometheus_url, datasource_uid)
    try:
        api.datasource.get_datasource_by_uid(datasource_uid)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.datasource.create_datasource(payload)
        action = "created"
    else:
        api.datasource.update_datasource_by_uid(datasource_uid, payload)
        action = "updated"
    body: dict[str, Any] = {"dashboard": {**build_dashboard(datasource_uid), "id": None},
                            "overwrite": True, "message": "prefillshare push-dashboard"}
    if folder_uid:
        body["folderUid"] = folder_uid
    saved = api.dashboard.update_dashboard(body)
    # Read back: exactly one dashboard with our uid, whatever was there before.
    found = [d for d in api.search.search_dashboards(query=DASHBOARD_TITLE, type_="dash-db")
             if d.get("uid") == DASHBOARD_UID]
    if len(found) != 1:
        raise RuntimeError(f"expected one dashboard with uid {DASHBOARD_UID!r} after the push, "
                           f"Grafana lists {len(found)}")
    return PushResult(action, int(saved.get("version", 0)), str(saved.get("url", "")))


def _token(token_file: str | None) -> str | None:
    if token_file:
        return Path(token_file).read_text().strip()
    return os.environ.get("GRAFANA_TOKEN") or None


def _check_url(value: str, flag: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{flag}: expected an http(s) URL, got {value!r}")
    return value.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefillshare push-dashboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grafana-url", default=os.environ.get("GRAFANA_URL"),
                   help="Grafana's base URL (default: $GRAFANA_URL)")
    p.add_argument("--prometheus-url", default="http://127.0.0.1:9090",
                   help="the Prometheus that scrapes Ray, as Grafana's server reaches it")
    p.add_argument("--token-file", help="a Grafana service-account token (default: $GRAFANA_TOKEN)")
    p.add_argument("--datasource-uid", default=DATASOURCE_UID)
    p.add_argument("--folder-uid", help="a Grafana folder for the dashboard (default: General)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per Grafana call")
    p.add_argument("--print", action="store_true", dest="print_only",
                   help="print the dashboard JSON and push nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_only:
        print(json.dumps(build_dashboard(args.datasource_uid), indent=2))
        return 0
    try:
        if not args.grafana_url:
            raise ValueError("--grafana-url (or $GRAFANA_URL) is required")
        grafana_url = _check_url(args.grafana_url, "--grafana-url")
        prometheus_url = _check_url(args.prometheus_url, "--prometheus-url")
        token = _token(args.token_file)
    except (ValueError, OSError) as exc:
        print(f"prefillshare push-dashboard: {exc}", file=sys.stderr)
        return 2
    import niquests
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaException

    api = GrafanaApi.from_url(grafana_url, credential=token, timeout=args.timeout)
    print(f"[push-dashboard] pushing to {grafana_url} ...", file=sys.stderr, flush=True)
    try:
        result = push(api, prometheus_url, datasource_uid=args.datasource_uid,
                      folder_uid=args.folder_uid)
    except (GrafanaException, niquests.exceptions.RequestException, RuntimeError) as exc:
        print(f"prefillshare push-dashboard: {grafana_url}: {exc}", file=sys.stderr)
        return 1
    print(f"data source {args.datasource_uid!r} {result.datasource} ({prometheus_url}); "
          f"dashboard {DASHBOARD_UID!r} version {result.dashboard_version}: "
          f"{grafana_url}{result.dashboard_url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
