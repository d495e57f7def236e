"""The part of Grafana's HTTP API that `prefillshare push-dashboard` uses, as a small
in-memory HTTP server on 127.0.0.1 (no Grafana server can be installed on these machines).

Follows Grafana's documented behaviour for: bearer-token auth (401), data sources by uid
(GET 404 when absent, POST 409 on a duplicate name or uid, PUT), POST /api/dashboards/db
(a new uid is version 1; an existing uid needs overwrite or the same version, else 412;
each save bumps the version), GET /api/dashboards/uid/<uid> and /api/search.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class GrafanaState:
    token: str
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)  # by uid
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)  # by uid
    requests: list[tuple[str, str]] = field(default_factory=list)
    next_id: int = 1

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


class _Handler(BaseHTTPRequestHandler):
    state: GrafanaState  # set on the subclass made per server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        self.state.requests.append((method, url.path))
        if self.headers.get("Authorization") != f"Bearer {self.state.token}":
            self._reply(401, {"message": "Unauthorized"})
            return
        parts = url.path.strip("/").split("/")
        s = self.state
        if parts[:3] == ["api", "datasources", "uid"] and len(parts) == 4:
            uid = parts[3]
            if uid not in s.datasources:
                self._reply(404, {"message": "Data source not found"})
            elif method == "GET":
                self._reply(200, s.datasources[uid])
            elif method == "PUT":
                ds = self._body()
                if any(d["name"] == ds.get("name") and u != uid for u, d in s.datasources.items()):
                    self._reply(409, {"message": "data source with the same name already exists"})
                    return
                old = s.datasources[uid]
                s.datasources[uid] = {**ds, "id": old["id"], "uid": uid,
                                      "version": old["version"] + 1}
                self._reply(200, {"datasource": s.datasources[uid], "id": old["id"],
                                  "message": "Datasource updated", "name": ds.get("name")})
            else:
                self._reply(405, {"message": "method not allowed"})
        elif parts == ["api", "datasources"] and method == "POST":
            ds = self._body()
            if not ds.get("name") or not ds.get("type"):
                self._reply(400, {"message": "bad request data"})
                return
            uid = ds.get("uid") or f"ds{s.next_id}"
            if uid in s.datasources or any(d["name"] == ds["name"] for d in s.datasources.values()):
                self._reply(409, {"message": "data source with the same name already exists"})
                return
            s.datasources[uid] = {**ds, "uid": uid, "id": s.new_id(), "version": 1}
            self._reply(200, {"datasource": s.datasources[uid], "id": s.datasources[uid]["id"],
                              "message": "Datasource added", "name": ds["name"]})
        elif parts == ["api", "dashboards", "db"] and method == "POST":
            self._save_dashboard(self._body())
        elif parts[:3] == ["api", "dashboards", "uid"] and len(parts) == 4 and method == "GET":
            saved = s.dashboards.get(parts[3])
            if saved is None:
                self._reply(404, {"message": "Dashboard not found"})
            else:
                self._reply(200, {"dashboard": saved, "meta": {"version": saved["version"],
                                                               "folderUid": saved["_folder"]}})
        elif parts == ["api", "search"] and method == "GET":
            query = parse_qs(url.query)
            text = (query.get("query") or [""])[0].lower()
            kind = (query.get("type") or [None])[0]
            hits = [{"id": d["id"], "uid": d["uid"], "title": d["title"], "type": "dash-db",
                     "url": f"/d/{d['uid']}/x", "tags": d.get("tags", [])}
                    for d in s.dashboards.values() if text in d["title"].lower()]
            self._reply(200, hits if kind in (None, "dash-db") else [])
        else:
            self._reply(404, {"message": "Not found"})

    def _save_dashboard(self, body: Any) -> None:
        s = self.state
        dash = (body or {}).get("dashboard")
        if not isinstance(dash, dict) or not dash.get("title"):
            self._reply(400, {"message": "Dashboard title cannot be empty"})
            return
        uid = dash.get("uid") or f"d{s.next_id}"
        old = s.dashboards.get(uid)
        if old is not None and not body.get("overwrite") and dash.get("version") != old["version"]:
            self._reply(412, {"message": "The dashboard has been changed by someone else",
                              "status": "version-mismatch"})
            return
        version = old["version"] + 1 if old else 1
        dash_id = old["id"] if old else s.new_id()
        s.dashboards[uid] = {**dash, "uid": uid, "id": dash_id, "version": version,
                             "_folder": body.get("folderUid", "")}
        self._reply(200, {"id": dash_id, "uid": uid, "url": f"/d/{uid}/x", "status": "success",
                          "version": version, "slug": "x"})

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")


class FakeGrafana:
    def __init__(self, token: str = "test-token") -> None:
        self.state = GrafanaState(token=token)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGrafana:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
