"""`prefillshare push-dashboard` against a fake Grafana (tests/fake_grafana.py implements the
part of Grafana's HTTP API the command uses; no Grafana server can be installed here)."""

from __future__ import annotations

import pytest

from tests.fake_grafana import FakeGrafana

from observability.dashboard import DASHBOARD_UID, DATASOURCE_UID
from observability.grafana_push import DATASOURCE_NAME, main
from observability.panels import ROWS
from vllm_runtime.replica_env import free_port


@pytest.fixture
def grafana(monkeypatch):
    with FakeGrafana(token="s3cret") as g:
        monkeypatch.setenv("GRAFANA_TOKEN", "s3cret")
        yield g


def test_push_twice_gives_one_data_source_and_one_dashboard_updated(grafana, capsys):
    assert main(["--grafana-url", grafana.url, "--prometheus-url", "http://prom-a:9090"]) == 0
    first = capsys.readouterr().out
    assert main(["--grafana-url", grafana.url, "--prometheus-url", "http://prom-b:9090/"]) == 0
    second = capsys.readouterr().out
    assert "data source 'prefillshare-prometheus' created" in first
    assert "data source 'prefillshare-prometheus' updated" in second
    assert "version 1" in first and "version 2" in second

    state = grafana.state
    assert list(state.datasources) == [DATASOURCE_UID]
    ds = state.datasources[DATASOURCE_UID]
    assert (ds["name"], ds["type"], ds["url"], ds["version"]) == (
        DATASOURCE_NAME, "prometheus", "http://prom-b:9090", 2)
    assert list(state.dashboards) == [DASHBOARD_UID]
    dash = state.dashboards[DASHBOARD_UID]
    assert dash["version"] == 2
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) == sum(len(r.panels) for r in ROWS)
    assert {t["datasource"]["uid"] for p in panels for t in p["targets"]} == {DATASOURCE_UID}
    # One lookup-then-write per data source push, one save and one search per dashboard push.
    writes = [r for r in state.requests if r[0] != "GET"]
    assert writes == [("POST", "/api/datasources"), ("POST", "/api/dashboards/db"),
                      ("PUT", f"/api/datasources/uid/{DATASOURCE_UID}"),
                      ("POST", "/api/dashboards/db")]


def test_push_overwrites_a_dashboard_someone_edited(grafana, capsys):
    grafana.state.dashboards[DASHBOARD_UID] = {
        "uid": DASHBOARD_UID, "id": 99, "title": "PrefillShare (edited by hand)", "version": 7,
        "panels": [], "_folder": ""}
    assert main(["--grafana-url", grafana.url, "--folder-uid", "ops"]) == 0
    dash = grafana.state.dashboards[DASHBOARD_UID]
    assert (dash["id"], dash["version"], dash["title"], dash["_folder"]) == (
        99, 8, "PrefillShare", "ops")
    assert "version 8" in capsys.readouterr().out


def test_token_file(grafana, tmp_path, monkeypatch):
    monkeypatch.delenv("GRAFANA_TOKEN")
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert main(["--grafana-url", grafana.url, "--token-file", str(token)]) == 0
    assert DASHBOARD_UID in grafana.state.dashboards


def test_wrong_token_fails_and_writes_nothing(grafana, monkeypatch, capsys):
    monkeypatch.setenv("GRAFANA_TOKEN", "wrong")
    assert main(["--grafana-url", grafana.url]) == 1
    assert "Unauthorized" in capsys.readouterr().err
    assert not grafana.state.datasources and not grafana.state.dashboards


def test_a_data_source_of_the_same_name_is_a_conflict(grafana, capsys):
    grafana.state.datasources["someone-elses"] = {"uid": "someone-elses", "id": 1, "version": 1,
                                                  "name": DATASOURCE_NAME, "type": "prometheus"}
    assert main(["--grafana-url", grafana.url]) == 1
    assert "409" in capsys.readouterr().err
    assert not grafana.state.dashboards


def test_unreachable_grafana_fails(capsys):
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    assert main(["--grafana-url", url, "--timeout", "3"]) == 1
    assert url in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    ([], "--grafana-url (or $GRAFANA_URL) is required"),
    (["--grafana-url", "grafana:3000"], "--grafana-url: expected an http(s) URL"),
    (["--grafana-url", "http://g:3000", "--prometheus-url", "prom"],
     "--prometheus-url: expected an http(s) URL"),
    (["--grafana-url", "http://g:3000", "--token-file", "/nonexistent/token"], "/nonexistent/token"),
])
def test_bad_usage_exits_2(argv, message, monkeypatch, capsys):
    monkeypatch.delenv("GRAFANA_URL", raising=False)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_print_pushes_nothing(capsys):
    import json

    assert main(["--print", "--datasource-uid", "mine"]) == 0
    dash = json.loads(capsys.readouterr().out)
    assert dash["uid"] == DASHBOARD_UID
    assert {p["datasource"]["uid"] for p in dash["panels"] if p["type"] != "row"} == {"mine"}
