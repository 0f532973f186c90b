"""``coldchain grafana push``: upload the folder, datasources and boards to a running Grafana, idempotently.

What is uploaded comes from the ``grafana/`` directory (``--dir``), the same files file provisioning reads:
the folder from ``provisioning/dashboards/coldchain.yaml``, the datasources from
``provisioning/datasources/coldchain.yaml`` (``$VAR`` / ``${VAR}`` expanded from the environment, as Grafana
does) and the boards from ``dashboards/*.json``. Each object is read first and written only if it differs, so a
second push changes nothing and reports every object ``unchanged``.

Secrets: the Grafana token goes only into the ``Authorization`` header; it is never logged, printed, or kept
in an error message. Datasource secrets (``secureJsonData``) cannot be read back from Grafana: they are sent when
the datasource is created or changed, or when Grafana reports the field unset; ``resend_secrets`` forces it
(after rotating a token).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from coldchain.errors import ColdchainError, ConfigError
from hub.grafana.files import DASHBOARD_PROVIDER_FILE, DASHBOARDS_DIR, DATASOURCES_FILE

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
"""Per request; Grafana answers these calls in milliseconds, so ten seconds only ever waits for a dead host."""
PUSH_MESSAGE = "coldchain grafana push"
"""The version-history message Grafana keeps with each dashboard version we write."""
NOT_FOUND = 404

# The datasource fields of a provisioning file that the HTTP API takes as they are.
_DATASOURCE_FIELDS = (
    "uid",
    "name",
    "type",
    "access",
    "url",
    "user",
    "database",
    "basicAuth",
    "basicAuthUser",
    "withCredentials",
    "isDefault",
    "jsonData",
)
# What Grafana reports for a field a datasource was created without.
_DATASOURCE_DEFAULTS: Mapping[str, Any] = {
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
# Grafana's provisioning interpolation: $$ is a literal $, then ${NAME} or $NAME.
_ENV_REFERENCE = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)")

Kind = Literal["folder", "datasource", "dashboard"]
Action = Literal["created", "updated", "unchanged"]


class GrafanaPushError(ColdchainError):
    """Grafana refused or could not be reached; says which object, and the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, obj: str | None = None) -> None:
        self.status = status
        self.obj = obj
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class PushResult:
    """What push did to one object."""

    kind: Kind
    uid: str
    action: Action

    def __str__(self) -> str:
        return f"{self.kind} {self.uid}: {self.action}"


@dataclass(frozen=True, slots=True)
class Bundle:
    """What a push uploads, read from a ``grafana/`` directory."""

    folder_uid: str
    folder_title: str
    datasources: tuple[dict[str, Any], ...]
    dashboards: tuple[dict[str, Any], ...]


def load_bundle(directory: Path, environ: Mapping[str, str] | None = None) -> Bundle:
    """Read the folder, datasources and boards under ``directory``; ``$VAR`` in datasources from ``environ``."""
    env = os.environ if environ is None else environ
    provider = _first(_read_yaml(directory / DASHBOARD_PROVIDER_FILE), "providers", directory / DASHBOARD_PROVIDER_FILE)
    folder_uid, folder_title = provider.get("folderUid"), provider.get("folder")
    if not isinstance(folder_uid, str) or not folder_uid or not isinstance(folder_title, str) or not folder_title:
        raise ConfigError(
            "the dashboard provider needs a folder and a folderUid", source=str(directory / DASHBOARD_PROVIDER_FILE)
        )

    datasources_path = directory / DATASOURCES_FILE
    entries = _read_yaml(datasources_path).get("datasources")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("expected a list of datasources", source=str(datasources_path))
    datasources = tuple(_datasource_body(entry, env, datasources_path) for entry in entries)

    boards = []
    board_paths = sorted((directory / DASHBOARDS_DIR).glob("*.json"))
    if not board_paths:
        raise ConfigError(
            "no dashboards (*.json); run `coldchain grafana build` first", source=str(directory / DASHBOARDS_DIR)
        )
    for path in board_paths:
        try:
            board = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable dashboard: {exc}", source=str(path)) from exc
        if not isinstance(board, dict) or not isinstance(board.get("uid"), str) or not board["uid"]:
            raise ConfigError("a dashboard needs a uid, so that pushing it again updates it", source=str(path))
        boards.append(board)
    return Bundle(folder_uid, folder_title, datasources, tuple(boards))


def push(
    url: str,
    token: str,
    directory: Path,
    *,
    environ: Mapping[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    resend_secrets: bool = False,
) -> list[PushResult]:
    """Create or update the folder, datasources and boards from ``directory`` in the Grafana at ``url``.

    Raises :class:`GrafanaPushError` (Grafana refused, or is unreachable) or ``ConfigError`` (bad input files).
    """
    if not token:
        raise ConfigError("no Grafana token (pass --token or set GRAFANA_TOKEN)")
    bundle = load_bundle(directory, environ)
    return _Pusher(url, token, timeout_s).run(bundle, resend_secrets=resend_secrets)


class _Pusher:
    """One push session: the client, and the conversion of its errors at this boundary."""

    def __init__(self, url: str, token: str, timeout_s: float) -> None:
        try:
            parts = urlsplit(url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
        except ValueError:  # a port that is not a number
            valid = False
        if not valid:
            raise ConfigError("not an http(s) URL with a host", source="--url")
        # grafana-client appends "api" to the path as given: a sub-path must end with a slash.
        path = parts.path.rstrip("/") + "/" if parts.path.strip("/") else ""
        self.url = _redact(url)
        self.token = token
        self.api: Any = GrafanaApi.from_url(
            urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")), credential=token, timeout=timeout_s
        )

    def run(self, bundle: Bundle, *, resend_secrets: bool) -> list[PushResult]:
        results = [self._folder(bundle.folder_uid, bundle.folder_title)]
        results += [self._datasource(body, resend_secrets=resend_secrets) for body in bundle.datasources]
        results += [self._dashboard(board, bundle.folder_uid) for board in bundle.dashboards]
        return results

    def _folder(self, uid: str, title: str) -> PushResult:
        what = f"folder {uid}"
        existing = self._get(what, lambda: self.api.folder.get_folder(uid))
        if existing is None:
            self._call(f"creating {what}", lambda: self.api.folder.create_folder(title, uid=uid))
            return self._done("folder", uid, "created")
        if existing.get("title") == title:
            return self._done("folder", uid, "unchanged")
        version = existing.get("version")
        self._call(f"updating {what}", lambda: self.api.folder.update_folder(uid, title=title, version=version))
        return self._done("folder", uid, "updated")

    def _datasource(self, body: dict[str, Any], *, resend_secrets: bool) -> PushResult:
        uid = str(body["uid"])
        what = f"datasource {uid}"
        existing = self._get(what, lambda: self.api.datasource.get_datasource_by_uid(uid))
        if existing is None:
            self._call(f"creating {what}", lambda: self.api.datasource.create_datasource(body))
            return self._done("datasource", uid, "created")
        resend = resend_secrets and bool(body.get("secureJsonData"))
        if not resend and not _datasource_differs(existing, body):
            return self._done("datasource", uid, "unchanged")
        if existing.get("readOnly"):
            raise GrafanaPushError(
                f"{what} in Grafana at {self.url} comes from a provisioning file there (read-only) and differs from "
                f"{DATASOURCES_FILE}: change that file, or remove it so that push manages the datasource",
                obj=what,
            )
        self._call(f"updating {what}", lambda: self.api.datasource.update_datasource_by_uid(uid, body))
        return self._done("datasource", uid, "updated")

    def _dashboard(self, board: dict[str, Any], folder_uid: str) -> PushResult:
        uid = str(board["uid"])
        what = f"dashboard {uid}"
        existing = self._get(what, lambda: self.api.dashboard.get_dashboard(uid))
        if existing is not None:
            stored = existing.get("dashboard") or {}
            meta = existing.get("meta") or {}
            if _comparable(stored) == _comparable(board) and meta.get("folderUid") == folder_uid:
                return self._done("dashboard", uid, "unchanged")
        payload = {"dashboard": board, "folderUid": folder_uid, "overwrite": True, "message": PUSH_MESSAGE}
        self._call(f"saving {what}", lambda: self.api.dashboard.update_dashboard(payload))
        return self._done("dashboard", uid, "created" if existing is None else "updated")

    def _get(self, what: str, call: Callable[[], Any]) -> dict[str, Any] | None:
        """The object, or None when Grafana has none by that uid."""
        try:
            found = call()
        except GrafanaClientError as exc:
            if exc.status_code == NOT_FOUND:
                return None
            raise self._error(f"reading {what}", exc) from None
        except (GrafanaException, OSError) as exc:
            raise self._error(f"reading {what}", exc) from None
        if not isinstance(found, dict):
            raise GrafanaPushError(f"reading {what}: Grafana at {self.url} answered {type(found).__name__}", obj=what)
        return found

    def _call(self, what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except (GrafanaException, OSError) as exc:
            # "from None": the chained client exception would carry request details into tracebacks.
            raise self._error(what, exc) from None

    def _error(self, what: str, exc: Exception) -> GrafanaPushError:
        status = getattr(exc, "status_code", None) if isinstance(exc, GrafanaException) else None
        if isinstance(exc, OSError) or not status:
            message = f"{what}: cannot reach Grafana at {self.url}: {exc}"
        elif status == 401:
            message = f"{what}: Grafana at {self.url} rejected the token (HTTP 401); check --token / GRAFANA_TOKEN"
        elif status == 403:
            message = (
                f"{what}: the token may not do this (HTTP 403 from {self.url}); "
                "use a service account with the Admin role (datasources need it)"
            )
        else:
            message = f"{what}: Grafana at {self.url} answered HTTP {status}: {_detail(exc)}"
        return GrafanaPushError(message.replace(self.token, "***"), status=status or None, obj=what)

    @staticmethod
    def _done(kind: Kind, uid: str, action: Action) -> PushResult:
        result = PushResult(kind, uid, action)
        logger.info("%s", result)
        return result


def _datasource_differs(existing: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Whether Grafana's datasource differs from ``body`` in any field ``body`` sets (secrets: only set or not)."""
    for key, wanted in body.items():
        if key == "secureJsonData":
            set_fields = existing.get("secureJsonFields") or {}
            if any(not set_fields.get(name) for name in wanted):
                return True
        elif existing.get(key, _DATASOURCE_DEFAULTS.get(key)) != wanted:
            return True
    return False


def _comparable(board: Mapping[str, Any]) -> dict[str, Any]:
    """A board without what Grafana assigns on save (numeric id, version)."""
    return {key: value for key, value in board.items() if key not in ("id", "version")}


def _datasource_body(entry: Mapping[str, Any], environ: Mapping[str, str], source: Path) -> dict[str, Any]:
    """The HTTP API body for one provisioning-file datasource, environment references expanded."""
    uid, name, kind = entry.get("uid"), entry.get("name"), entry.get("type")
    if not all(isinstance(v, str) and v for v in (uid, name, kind)):
        raise ConfigError(
            "each datasource needs a uid, a name and a type (push finds it again by uid)", source=str(source)
        )
    body: dict[str, Any] = {key: entry[key] for key in _DATASOURCE_FIELDS if key in entry}
    body.setdefault("access", "proxy")
    secure = entry.get("secureJsonData")
    if secure:
        if not isinstance(secure, dict):
            raise ConfigError(f"datasource {uid}: secureJsonData must be a mapping", source=str(source))
        body["secureJsonData"] = secure
    return {key: _expand(value, environ, f"datasource {uid}", str(source)) for key, value in body.items()}


def _expand(value: Any, environ: Mapping[str, str], owner: str, source: str) -> Any:
    """Grafana's ``$VAR`` / ``${VAR}`` expansion over strings; an unset variable is an error, not an empty string."""
    if isinstance(value, dict):
        return {key: _expand(item, environ, owner, source) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, environ, owner, source) for item in value]
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(2)
        if name not in environ:
            raise ConfigError(f"{owner} needs the environment variable {name}", source=source)
        return environ[name]

    return _ENV_REFERENCE.sub(lookup, value)


def _read_yaml(path: Path) -> dict[str, Any]:
    # PyYAML arrives with the demo and dev extras, not necessarily with coldchain[hub]; imported by name so a
    # missing install is a clear error (and mypy needs no stubs for it).
    try:
        yaml = import_module("yaml")
    except ImportError as exc:
        raise ConfigError("reading provisioning files needs PyYAML (pip install pyyaml)", source=str(path)) from exc
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc}", source=str(path)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError("expected a YAML mapping", source=str(path))
    return data


def _first(data: Mapping[str, Any], key: str, source: Path) -> Mapping[str, Any]:
    items = data.get(key)
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise ConfigError(f"expected a non-empty list under {key}", source=str(source))
    first: Mapping[str, Any] = items[0]
    return first


def _redact(url: str) -> str:
    """``url`` without user info or query (either could hold a credential), for messages."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _detail(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("message"):
        return str(response["message"])
    return str(exc)
