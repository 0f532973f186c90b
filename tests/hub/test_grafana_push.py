"""`coldchain grafana push` through grafana-client against a stand-in for Grafana's HTTP API.

Grafana itself cannot run here, so a small HTTP server plays it: only the endpoints push calls, with Grafana's
documented semantics (status codes, bodies, versions, ``secureJsonFields``, read-only provisioned datasources,
``overwrite`` on dashboards) and a bearer token check. It records every request.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from coldchain.cli import main
from coldchain.errors import ConfigError
from hub.grafana.files import DATASOURCES_FILE, write
from hub.grafana.provisioning import FOLDER_UID, HUB_TOKEN_ENV
from hub.grafana.push import GrafanaPushError, push

TOKEN = "glsa_test-token-0123456789abcdef"
HUB_SECRET = "hub-api-secret-for-grafana"
ENV = {HUB_TOKEN_ENV: HUB_SECRET}
BOARDS = ("cc-excursions", "cc-gateway-health", "cc-node", "cc-warehouse")
DS_DEFAULTS: dict[str, Any] = {
    "access": "proxy",
    "url": "",
    "user": "",
    "database": "",
    "basicAuth": False,
    "basicAuthUser": "",
    "withCredentials": False,
    "isDefault": False,
    "jsonData": {},
}


@dataclass
class GrafanaState:
    """What the stand-in Grafana holds, and the requests it received."""

    token: str
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail_dashboard_saves: int | None = None  # answer POST /api/dashboards/db with this status
    next_id: int = 1

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path, _ in self.requests if method != "GET"]

    def datasource_view(self, uid: str) -> dict[str, Any]:
        """A datasource as GET returns it: never the secrets, only which secret fields are set."""
        view = dict(self.datasources[uid])
        view["secureJsonFields"] = dict.fromkeys(self.secrets.get(uid, {}), True)
        return view


class FakeGrafanaHandler(BaseHTTPRequestHandler):
    state: GrafanaState  # set on the subclass each server gets

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures, not access logs."""

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        raw_path = self.path.split("?")[0]
        self.state.requests.append((method, raw_path, body))
        path = raw_path.removeprefix("/grafana")  # also served under a sub-path, as behind a reverse proxy
        self.state.headers.append(dict(self.headers))
        if self.headers.get("Authorization") != f"Bearer {self.state.token}":
            self._reply(401, {"message": "Invalid API key", "messageId": "api-key.invalid", "statusCode": 401})
            return
        for pattern, handler in ROUTES:
            if pattern[0] == method and (match := re.fullmatch(pattern[1], path)):
                status, reply = handler(self.state, body, *match.groups())
                self._reply(status, reply)
                return
        self._reply(404, {"message": "Not found"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")


def get_folder(state: GrafanaState, body: Any, uid: str) -> tuple[int, Any]:
    if uid not in state.folders:
        return 404, {"message": "folder not found", "status": "not-found"}
    return 200, state.folders[uid]


def create_folder(state: GrafanaState, body: Any) -> tuple[int, Any]:
    uid = body.get("uid")
    if uid in state.folders:
        return 409, {"message": "a folder with the same uid already exists"}
    if not body.get("title"):
        return 400, {"message": "folder title cannot be empty"}
    folder = {"id": state.new_id(), "uid": uid, "title": body["title"], "url": f"/dashboards/f/{uid}/", "version": 1}
    state.folders[uid] = folder
    return 200, folder


def update_folder(state: GrafanaState, body: Any, uid: str) -> tuple[int, Any]:
    folder = state.folders.get(uid)
    if folder is None:
        return 404, {"message": "folder not found"}
    if not body.get("overwrite") and body.get("version") != folder["version"]:
        return 412, {"message": "the folder has been changed by someone else", "status": "version-mismatch"}
    folder.update(title=body["title"], version=folder["version"] + 1)
    return 200, folder


def get_datasource(state: GrafanaState, body: Any, uid: str) -> tuple[int, Any]:
    if uid not in state.datasources:
        return 404, {"message": "Data source not found"}
    return 200, state.datasource_view(uid)


def _store_datasource(state: GrafanaState, uid: str, body: dict[str, Any], previous: dict[str, Any] | None) -> None:
    record = {**DS_DEFAULTS, **{k: v for k, v in body.items() if k != "secureJsonData"}}
    record.update(
        uid=uid,
        id=previous["id"] if previous else state.new_id(),
        orgId=1,
        version=previous["version"] + 1 if previous else 1,
        readOnly=previous["readOnly"] if previous else False,
    )
    state.datasources[uid] = record
    # Secrets given are stored; those not given are kept (Grafana merges secureJsonData on update).
    state.secrets.setdefault(uid, {}).update(body.get("secureJsonData") or {})
    if record["isDefault"]:  # one default per organisation
        for other in state.datasources.values():
            if other["uid"] != uid:
                other["isDefault"] = False


def create_datasource(state: GrafanaState, body: Any) -> tuple[int, Any]:
    if not body.get("name") or not body.get("type"):
        return 400, {"message": "Required fields name and type"}
    uid = body.get("uid") or f"generated-{state.next_id}"
    if uid in state.datasources:
        return 409, {"message": "data source with the same uid already exists"}
    if any(ds["name"] == body["name"] for ds in state.datasources.values()):
        return 409, {"message": "data source with the same name already exists"}
    _store_datasource(state, uid, body, None)
    view = state.datasource_view(uid)
    return 200, {"datasource": view, "id": view["id"], "message": "Datasource added", "name": view["name"]}


def update_datasource(state: GrafanaState, body: Any, uid: str) -> tuple[int, Any]:
    previous = state.datasources.get(uid)
    if previous is None:
        return 404, {"message": "Data source not found"}
    if previous["readOnly"]:
        return 403, {"message": "Cannot update read-only data source"}
    _store_datasource(state, uid, body, previous)
    view = state.datasource_view(uid)
    return 200, {"datasource": view, "id": view["id"], "message": "Datasource updated", "name": view["name"]}


def get_dashboard(state: GrafanaState, body: Any, uid: str) -> tuple[int, Any]:
    if uid not in state.dashboards:
        return 404, {"message": "Dashboard not found"}
    return 200, state.dashboards[uid]


def save_dashboard(state: GrafanaState, body: Any) -> tuple[int, Any]:
    if state.fail_dashboard_saves:
        return state.fail_dashboard_saves, {"message": "database is locked"}
    board = dict(body["dashboard"])
    folder_uid = body.get("folderUid") or ""
    if folder_uid and folder_uid not in state.folders:
        return 400, {"message": "folder not found"}
    uid = board.get("uid")
    existing = state.dashboards.get(uid)
    if existing and not body.get("overwrite"):
        if board.get("id") is None:
            return 412, {"message": "A dashboard with the same uid already exists", "status": "name-exists"}
        if board.get("version") != existing["dashboard"]["version"]:
            return 412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}
    version = existing["dashboard"]["version"] + 1 if existing else 1
    board.update(id=existing["dashboard"]["id"] if existing else state.new_id(), uid=uid, version=version)
    folder_title = state.folders[folder_uid]["title"] if folder_uid else "General"
    state.dashboards[uid] = {
        "dashboard": board,
        "meta": {"folderUid": folder_uid, "folderTitle": folder_title, "provisioned": False, "url": f"/d/{uid}/"},
    }
    return 200, {"id": board["id"], "uid": uid, "url": f"/d/{uid}/", "status": "success", "version": version}


ROUTES = [
    (("GET", r"/api/folders/([^/]+)"), get_folder),
    (("POST", r"/api/folders"), create_folder),
    (("PUT", r"/api/folders/([^/]+)"), update_folder),
    (("GET", r"/api/datasources/uid/([^/]+)"), get_datasource),
    (("POST", r"/api/datasources"), create_datasource),
    (("PUT", r"/api/datasources/uid/([^/]+)"), update_datasource),
    (("GET", r"/api/dashboards/uid/([^/]+)"), get_dashboard),
    (("POST", r"/api/dashboards/db"), save_dashboard),
]


@dataclass
class FakeGrafana:
    url: str
    state: GrafanaState


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    state = GrafanaState(token=TOKEN)
    handler = type("Handler", (FakeGrafanaHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield FakeGrafana(f"http://127.0.0.1:{server.server_address[1]}", state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "grafana"
    write(directory)
    return directory


def actions(results: list[Any]) -> dict[str, str]:
    return {f"{r.kind} {r.uid}": r.action for r in results}


def test_first_push_creates_folder_datasources_and_boards(grafana: FakeGrafana, bundle_dir: Path) -> None:
    results = push(grafana.url, TOKEN, bundle_dir, environ=ENV)
    assert actions(results) == {
        f"folder {FOLDER_UID}": "created",
        "datasource cc-vm": "created",
        "datasource cc-hub-api": "created",
        **{f"dashboard {uid}": "created" for uid in BOARDS},
    }
    state = grafana.state
    assert state.folders[FOLDER_UID]["title"] == "冷链 Cold chain"
    assert state.datasources["cc-vm"]["type"] == "prometheus"
    assert state.datasources["cc-vm"]["url"] == "http://127.0.0.1:8428"
    assert state.secrets["cc-hub-api"] == {"bearerToken": HUB_SECRET}  # ${COLDCHAIN_HUB_API_TOKEN} expanded
    assert sorted(state.dashboards) == sorted(BOARDS)
    assert {d["meta"]["folderUid"] for d in state.dashboards.values()} == {FOLDER_UID}
    committed = json.loads((bundle_dir / "dashboards" / "cc-node.json").read_text(encoding="utf-8"))
    assert state.dashboards["cc-node"]["dashboard"]["title"] == committed["title"]


def test_second_push_writes_nothing(grafana: FakeGrafana, bundle_dir: Path) -> None:
    push(grafana.url, TOKEN, bundle_dir, environ=ENV)
    before = len(grafana.state.requests)
    versions = {uid: d["dashboard"]["version"] for uid, d in grafana.state.dashboards.items()}
    results = push(grafana.url, TOKEN, bundle_dir, environ=ENV)
    assert set(actions(results).values()) == {"unchanged"}
    assert len(results) == 1 + 2 + len(BOARDS)
    second_run = grafana.state.requests[before:]
    assert [method for method, _, _ in second_run] == ["GET"] * len(results)
    assert {uid: d["dashboard"]["version"] for uid, d in grafana.state.dashboards.items()} == versions


def test_a_changed_board_and_datasource_are_updated_alone(grafana: FakeGrafana, bundle_dir: Path) -> None:
    push(grafana.url, TOKEN, bundle_dir, environ=ENV)
    board_path = bundle_dir / "dashboards" / "cc-warehouse.json"
    board = json.loads(board_path.read_text(encoding="utf-8"))
    board["refresh"] = "5m"
    board_path.write_text(json.dumps(board), encoding="utf-8")
    sources = bundle_dir / DATASOURCES_FILE
    sources.write_text(sources.read_text(encoding="utf-8").replace("127.0.0.1:8428", "vm.internal:8428"), "utf-8")
    before = len(grafana.state.requests)

    results = actions(push(grafana.url, TOKEN, bundle_dir, environ=ENV))

    assert results.pop("dashboard cc-warehouse") == "updated"
    assert results.pop("datasource cc-vm") == "updated"
    assert set(results.values()) == {"unchanged"}
    assert grafana.state.writes()[-2:] == [("PUT", "/api/datasources/uid/cc-vm"), ("POST", "/api/dashboards/db")]
    assert len([r for r in grafana.state.requests[before:] if r[0] != "GET"]) == 2
    assert grafana.state.dashboards["cc-warehouse"]["dashboard"]["refresh"] == "5m"
    assert grafana.state.dashboards["cc-warehouse"]["dashboard"]["version"] == 2
    assert grafana.state.datasources["cc-vm"]["url"] == "http://vm.internal:8428"
    save = grafana.state.requests[-1][2]
    assert save["overwrite"] is True
    assert save["folderUid"] == FOLDER_UID


def test_changes_made_in_grafana_are_put_back(grafana: FakeGrafana, bundle_dir: Path) -> None:
    push(grafana.url, TOKEN, bundle_dir, environ=ENV)
    grafana.state.folders[FOLDER_UID]["title"] = "renamed by hand"
    grafana.state.dashboards["cc-node"]["meta"]["folderUid"] = ""  # moved to General
    grafana.state.secrets["cc-hub-api"].clear()  # secret lost
    results = actions(push(grafana.url, TOKEN, bundle_dir, environ=ENV))
    assert results[f"folder {FOLDER_UID}"] == "updated"
    assert results["dashboard cc-node"] == "updated"
    assert results["datasource cc-hub-api"] == "updated"
    assert grafana.state.folders[FOLDER_UID]["title"] == "冷链 Cold chain"
    assert grafana.state.dashboards["cc-node"]["meta"]["folderUid"] == FOLDER_UID
    assert grafana.state.secrets["cc-hub-api"] == {"bearerToken": HUB_SECRET}


def test_resend_secrets_updates_datasources_with_secrets_only(grafana: FakeGrafana, bundle_dir: Path) -> None:
    push(grafana.url, TOKEN, bundle_dir, environ=ENV)
    rotated = {HUB_TOKEN_ENV: "rotated-secret"}
    assert actions(push(grafana.url, TOKEN, bundle_dir, environ=rotated))["datasource cc-hub-api"] == "unchanged"
    assert grafana.state.secrets["cc-hub-api"]["bearerToken"] == HUB_SECRET  # Grafana cannot show it: not compared
    results = actions(push(grafana.url, TOKEN, bundle_dir, environ=rotated, resend_secrets=True))
    assert results.pop("datasource cc-hub-api") == "updated"
    assert set(results.values()) == {"unchanged"}  # cc-vm has no secret to resend
    assert grafana.state.secrets["cc-hub-api"]["bearerToken"] == "rotated-secret"


def test_push_to_grafana_under_a_sub_path(grafana: FakeGrafana, bundle_dir: Path) -> None:
    for url in (f"{grafana.url}/grafana", f"{grafana.url}/grafana/"):
        push(url, TOKEN, bundle_dir, environ=ENV)
    assert {path.split("/api/")[0] for _, path, _ in grafana.state.requests} == {"/grafana"}
    assert len(grafana.state.dashboards) == len(BOARDS)


def test_a_bad_token_is_a_clear_error_without_the_token(grafana: FakeGrafana, bundle_dir: Path) -> None:
    wrong = "glsa_wrong-token-fedcba9876543210"
    with pytest.raises(GrafanaPushError) as caught:
        push(grafana.url, wrong, bundle_dir, environ=ENV)
    assert caught.value.status == 401
    assert caught.value.obj == f"reading folder {FOLDER_UID}"
    assert "rejected the token (HTTP 401)" in str(caught.value)
    assert wrong not in str(caught.value)
    assert grafana.state.writes() == []


def test_grafana_errors_name_the_object_and_status(grafana: FakeGrafana, bundle_dir: Path) -> None:
    grafana.state.fail_dashboard_saves = 500
    with pytest.raises(GrafanaPushError) as caught:
        push(grafana.url, TOKEN, bundle_dir, environ=ENV)
    assert caught.value.status == 500
    assert (
        str(caught.value)
        == f"saving dashboard cc-excursions: Grafana at {grafana.url} answered HTTP 500: database is locked"
    )


def test_a_provisioned_datasource_that_differs_is_not_overwritten(grafana: FakeGrafana, bundle_dir: Path) -> None:
    push(grafana.url, TOKEN, bundle_dir, environ=ENV)
    grafana.state.datasources["cc-vm"].update(readOnly=True, url="http://elsewhere:8428")
    with pytest.raises(GrafanaPushError, match="read-only"):
        push(grafana.url, TOKEN, bundle_dir, environ=ENV)
    assert grafana.state.datasources["cc-vm"]["url"] == "http://elsewhere:8428"


def test_a_missing_secret_variable_stops_before_any_request(grafana: FakeGrafana, bundle_dir: Path) -> None:
    with pytest.raises(ConfigError, match=HUB_TOKEN_ENV):
        push(grafana.url, TOKEN, bundle_dir, environ={})
    assert grafana.state.requests == []


def test_an_unreachable_grafana_is_a_clear_error(bundle_dir: Path) -> None:
    with pytest.raises(GrafanaPushError, match=r"cannot reach Grafana at http://127\.0\.0\.1:9/"):
        push("http://127.0.0.1:9/", TOKEN, bundle_dir, environ=ENV, timeout_s=2)


def test_push_needs_a_token_and_built_boards(tmp_path: Path, bundle_dir: Path) -> None:
    with pytest.raises(ConfigError, match="GRAFANA_TOKEN"):
        push("http://127.0.0.1:9", "", bundle_dir, environ=ENV)
    empty = tmp_path / "empty"
    shutil.copytree(bundle_dir / "provisioning", empty / "provisioning")
    with pytest.raises(ConfigError, match="grafana build"):
        push("http://127.0.0.1:9", TOKEN, empty, environ=ENV)


def test_the_cli_push_never_shows_the_token(
    grafana: FakeGrafana,
    bundle_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    monkeypatch.setenv(HUB_TOKEN_ENV, HUB_SECRET)
    caplog.set_level(logging.DEBUG)
    argv = ["--log-level", "DEBUG", "grafana", "push", "--url", grafana.url, "--dir", str(bundle_dir)]
    assert main(argv) == 0
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.count("dashboard cc-node: created") == 1
    assert out.count("dashboard cc-node: unchanged") == 1
    assert "folder cc-coldchain: unchanged" in out
    assert grafana.state.headers[0]["Authorization"] == f"Bearer {TOKEN}"  # it was sent, only there
    for text in (out, err, caplog.text):
        assert TOKEN not in text
        assert HUB_SECRET not in text

    monkeypatch.setenv("GRAFANA_TOKEN", "glsa_not-the-right-one")
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "rejected the token (HTTP 401)" in err
    assert "glsa_not-the-right-one" not in out + err + caplog.text
