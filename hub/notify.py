"""Alarm notifications for staff: group robots (DingTalk, WeCom, Feishu) and a generic signed JSON hook.

Pure functions: a notice and the endpoint's settings in, a prepared HTTP request out. The outbox
dispatcher sends it; nothing here touches the network, so every format is tested byte for byte.

Formats and signing rules (sources in docs/webhooks.md):

- DingTalk custom robot: ``{"msgtype": "markdown", "markdown": {"title", "text"}}``; with "加签" the URL
  gets ``&timestamp=<ms>&sign=<urlencode(base64(HMAC-SHA256(key=secret, msg=f"{ms}\\n{secret}")))>``.
- WeCom group robot: ``{"msgtype": "markdown", "markdown": {"content"}}``; the key is in the URL, no signing.
- Feishu/Lark custom bot: ``{"timestamp": "<s>", "sign": base64(HMAC-SHA256(key=f"{s}\\n{secret}", msg=b"")),
  "msg_type": "text", "content": {"text"}}``.
- generic: our own JSON, signed with :mod:`hub.webhooks`.

Messages are in Simplified Chinese by default and carry the keyword 冷链告警 ("Cold-chain alarm" in
English), which is what a robot's keyword filter should be set to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Final, Literal

import msgspec

from coldchain.config import resolve_secret
from coldchain.errors import ColdchainError, ConfigError
from hub import webhooks


class NotificationFormat(StrEnum):
    """How an alarm is put on the wire for one endpoint."""

    generic = "generic"
    dingtalk = "dingtalk"
    wecom = "wecom"
    feishu = "feishu"


CLAIM_FORMAT: Final = "claim"
"""An endpoint of the shop platform: rows are posted as their own JSON payload, signed."""

EndpointFormat = Literal["generic", "dingtalk", "wecom", "feishu", "claim"]
"""A plain literal rather than ``NotificationFormat | Literal["claim"]``: msgspec allows one str-like type per union."""

SIGNED_FORMATS: Final = frozenset({CLAIM_FORMAT, NotificationFormat.generic.value})
"""Formats whose receivers verify our signature, so an endpoint of them must have a secret."""

LANGUAGES: Final = ("zh", "en")

MESSAGE_MAX_CHARS: Final = 500
"""The free text is cut here: WeCom refuses markdown over 4096 bytes, and a robot message is a pager."""

CHINA_STANDARD_TIME: Final = timezone(timedelta(hours=8), "UTC+8")
"""Staff read Chinese messages in Beijing time; English ones get UTC."""

JSON_HEADERS: Final = {"Content-Type": "application/json; charset=utf-8"}


class NotifyError(ColdchainError):
    """A notice cannot be rendered for an endpoint (unknown language, a signed format without a secret)."""


@dataclass(frozen=True)
class AlarmNotice:
    """What staff need to know about one alarm at one moment of its life."""

    alarm_id: str
    gateway_id: str
    sensor_id: str
    kind: str
    severity: str
    state: str
    value: float | None
    started_ms: int
    message: str
    escalation: int = 0


@dataclass(frozen=True)
class PreparedRequest:
    """A POST ready to send: the URL (signing parameters included), the body and the headers."""

    url: str
    body: bytes
    headers: dict[str, str]


class Endpoint(msgspec.Struct, forbid_unknown_fields=True):
    """A place notifications or claims go. The secret lives in a file or an environment variable, never here."""

    name: str
    url: str
    format: EndpointFormat
    secret_file: str | None = None
    secret_env: str | None = None
    timeout_s: float = 5.0

    def __repr__(self) -> str:
        # Robot URLs carry credentials (WeCom's key, DingTalk's access_token, Feishu's hook id).
        return f"Endpoint(name={self.name!r}, url={redact_url(self.url)!r}, format={self.format!r})"

    def load_secret(self, *, allow_placeholder: bool = False) -> bytes | None:
        """The signing secret, or None for an endpoint that signs nothing (WeCom, an unsigned robot)."""
        if self.secret_file is None and self.secret_env is None:
            if self.format in SIGNED_FORMATS:
                raise ConfigError(f"endpoint {self.name} ({self.format}) needs secret_file or secret_env")
            return None
        value = resolve_secret(
            name=f"endpoint {self.name}",
            file=self.secret_file,
            env=self.secret_env,
            allow_placeholder=allow_placeholder,
        )
        return value.encode()


def redact_url(url: str) -> str:
    """Scheme and host only: the rest of a robot URL is a credential."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.netloc else "…"


def alarm_event_id(notice: AlarmNotice) -> str:
    """A stable id for one step of one alarm: a re-sent step is recognised, the next escalation is not."""
    return f"alarm:{notice.alarm_id}:{notice.state}:{notice.escalation}"


def render(
    format: NotificationFormat | str,
    notice: AlarmNotice,
    *,
    url: str,
    secret: bytes | None,
    now_ms: int,
    language: str = "zh",
    event_id: str | None = None,
) -> PreparedRequest:
    """Build the request that posts ``notice`` to an endpoint of ``format``.

    ``secret`` signs DingTalk (in the URL), Feishu (in the body) and generic hooks (in a header);
    WeCom ignores it. ``event_id`` names a generic hook's event (default :func:`alarm_event_id`).
    """
    if language not in LANGUAGES:
        raise NotifyError(f"language {language!r} is not one of {', '.join(LANGUAGES)}")
    fmt = NotificationFormat(format)
    title, lines = _content(notice, language)
    if fmt is NotificationFormat.dingtalk:
        markdown = "\n\n".join([f"### {title}", *(f"- {line}" for line in lines)])
        body = {"msgtype": "markdown", "markdown": {"title": title, "text": markdown}}
        target = url if secret is None else _dingtalk_signed_url(url, secret, now_ms)
        return PreparedRequest(target, msgspec.json.encode(body), dict(JSON_HEADERS))
    if fmt is NotificationFormat.wecom:
        colour = "warning" if notice.state != "closed" else "info"
        markdown = "\n".join([f'## <font color="{colour}">{title}</font>', *(f"> {line}" for line in lines)])
        body = {"msgtype": "markdown", "markdown": {"content": markdown}}
        return PreparedRequest(url, msgspec.json.encode(body), dict(JSON_HEADERS))
    text = "\n".join([title, *lines])
    if fmt is NotificationFormat.feishu:
        feishu: dict[str, object] = {}
        if secret is not None:
            timestamp_s = now_ms // 1000
            feishu = {"timestamp": str(timestamp_s), "sign": feishu_sign(secret, timestamp_s)}
        feishu |= {"msg_type": "text", "content": {"text": text}}
        return PreparedRequest(url, msgspec.json.encode(feishu), dict(JSON_HEADERS))
    if secret is None:
        raise NotifyError("a generic webhook is always signed; give the endpoint a secret")
    event = event_id or alarm_event_id(notice)
    payload = msgspec.json.encode({"event_id": event, "type": "alarm", "notice": notice, "text": text})
    headers = dict(JSON_HEADERS)
    headers[webhooks.SIGNATURE_HEADER] = webhooks.sign(secret, payload, timestamp_s=now_ms // 1000)
    headers[webhooks.EVENT_ID_HEADER] = event
    return PreparedRequest(url, payload, headers)


def dingtalk_sign(secret: bytes, timestamp_ms: int) -> str:
    """DingTalk's ``sign``: base64 HMAC-SHA256 keyed with the secret over ``f"{timestamp_ms}\\n{secret}"``."""
    digest = hmac.new(secret, f"{timestamp_ms}\n".encode() + secret, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def feishu_sign(secret: bytes, timestamp_s: int) -> str:
    """Feishu's ``sign``: base64 HMAC-SHA256 keyed with ``f"{timestamp_s}\\n{secret}"`` over an empty message."""
    digest = hmac.new(f"{timestamp_s}\n".encode() + secret, b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _dingtalk_signed_url(url: str, secret: bytes, now_ms: int) -> str:
    sign = urllib.parse.quote(dingtalk_sign(secret, now_ms), safe="")
    separator = "&" if urllib.parse.urlsplit(url).query else "?"
    return f"{url}{separator}timestamp={now_ms}&sign={sign}"


_TEXT: Final[dict[str, dict[str, str]]] = {
    "zh": {
        "title": "【冷链告警】",
        "title_closed": "【冷链告警·已恢复】",
        "alarm": "告警编号",
        "where": "网关/传感器",
        "kind": "类型",
        "severity": "级别",
        "state": "状态",
        "value": "当前值",
        "started": "开始时间",
        "escalation": "升级",
        "escalation_value": "第 {n} 次",
        "no_value": "无读数",
    },
    "en": {
        "title": "[Cold-chain alarm] ",
        "title_closed": "[Cold-chain alarm, recovered] ",
        "alarm": "Alarm",
        "where": "Gateway/sensor",
        "kind": "Kind",
        "severity": "Severity",
        "state": "State",
        "value": "Value",
        "started": "Started",
        "escalation": "Escalation",
        "escalation_value": "#{n}",
        "no_value": "no reading",
    },
}

# Known labels are translated; anything else (a detector added later) is shown as it comes.
_LABELS_ZH: Final[dict[str, str]] = {
    "critical": "严重",
    "warning": "警告",
    "info": "提示",
    "open": "未处理",
    "acknowledged": "已确认",
    "closed": "已关闭",
    "out_of_range": "超出范围",
    "time_out_of_range": "累计超时",
    "mkt": "平均动力学温度超限",
    "door_open": "疑似开门",
    "stuck_sensor": "传感器卡死",
    "silent_gateway": "网关失联",
    "fluctuation": "异常波动",
}


def _label(value: str, language: str) -> str:
    if language == "zh" and value in _LABELS_ZH:
        return f"{_LABELS_ZH[value]} ({value})"
    return value


def _content(notice: AlarmNotice, language: str) -> tuple[str, list[str]]:
    text = _TEXT[language]
    zone = CHINA_STANDARD_TIME if language == "zh" else UTC
    started = datetime.fromtimestamp(notice.started_ms / 1000, tz=zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    value = text["no_value"] if notice.value is None else f"{notice.value:.2f}"
    prefix = text["title_closed"] if notice.state == "closed" else text["title"]
    title = f"{prefix}{_label(notice.kind, language)} · {notice.gateway_id}/{notice.sensor_id}"
    message = notice.message if len(notice.message) <= MESSAGE_MAX_CHARS else notice.message[:MESSAGE_MAX_CHARS] + "…"
    lines = [
        f"{text['alarm']}: {notice.alarm_id}",
        f"{text['where']}: {notice.gateway_id}/{notice.sensor_id}",
        f"{text['kind']}: {_label(notice.kind, language)}",
        f"{text['severity']}: {_label(notice.severity, language)}",
        f"{text['state']}: {_label(notice.state, language)}",
        f"{text['value']}: {value}",
        f"{text['started']}: {started}",
    ]
    if notice.escalation:
        lines.append(f"{text['escalation']}: {text['escalation_value'].format(n=notice.escalation)}")
    if message:
        lines.append(message)
    return title, lines
