"""hub.notify: robot formats and signing rules, with signatures recomputed here from the vendors' documented recipes.

None of the vendors' pages gives a fixed (timestamp, secret, sign) triple: their examples sign
time.time(), so each expected value below is computed in the test with hmac/base64 directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from dataclasses import replace

import msgspec
import pytest

from coldchain.errors import ConfigError
from hub import webhooks
from hub.notify import (
    MESSAGE_MAX_CHARS,
    AlarmNotice,
    Endpoint,
    NotificationFormat,
    NotifyError,
    alarm_event_id,
    dingtalk_sign,
    feishu_sign,
    redact_url,
    render,
)

SECRET = b"SEC0123456789abcdef0123456789abcdef"
NOW_MS = 1_717_000_123_456
NOTICE = AlarmNotice(
    alarm_id="al-7",
    gateway_id="gw-truck-3",
    sensor_id="probe-1",
    kind="out_of_range",
    severity="critical",
    state="open",
    value=9.25,
    started_ms=1_717_000_000_000,
    message="冷藏车厢温度 9.3 °C,高于 8 °C 上限",
)
DINGTALK_URL = "https://oapi.dingtalk.com/robot/send?access_token=abc123"
WECOM_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-0000"
FEISHU_URL = "https://open.feishu.cn/open-apis/bot/v2/hook/0000-1111"


def body_of(prepared_body: bytes) -> dict[str, object]:
    decoded = json.loads(prepared_body)
    assert isinstance(decoded, dict)
    return decoded


def test_dingtalk_signs_the_url_as_documented() -> None:
    request = render("dingtalk", NOTICE, url=DINGTALK_URL, secret=SECRET, now_ms=NOW_MS)
    # Recipe (open.dingtalk.com, 加签): HmacSHA256 keyed with the secret over f"{timestamp}\n{secret}",
    # Base64, then urlEncode; timestamp in milliseconds.
    string_to_sign = f"{NOW_MS}\n{SECRET.decode()}".encode()
    expected_sign = base64.b64encode(hmac.new(SECRET, string_to_sign, hashlib.sha256).digest()).decode()
    assert request.url == f"{DINGTALK_URL}&timestamp={NOW_MS}&sign={urllib.parse.quote_plus(expected_sign)}"
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)
    assert query == {"access_token": ["abc123"], "timestamp": [str(NOW_MS)], "sign": [expected_sign]}


def test_dingtalk_body_is_markdown_with_the_keyword() -> None:
    request = render("dingtalk", NOTICE, url=DINGTALK_URL, secret=None, now_ms=NOW_MS)
    assert request.url == DINGTALK_URL  # no secret: no signing parameters
    body = body_of(request.body)
    assert body["msgtype"] == "markdown"
    markdown = body["markdown"]
    assert isinstance(markdown, dict)
    assert markdown["title"].startswith("【冷链告警】")
    assert "al-7" in markdown["text"]
    assert "9.25" in markdown["text"]
    assert "严重 (critical)" in markdown["text"]
    assert "2024-05-30 00:26:40 UTC+8" in markdown["text"]  # started_ms in Beijing time
    assert request.headers["Content-Type"].startswith("application/json")


def test_dingtalk_url_without_a_query_gets_one() -> None:
    request = render("dingtalk", NOTICE, url="http://127.0.0.1:9/robot/send", secret=SECRET, now_ms=NOW_MS)
    assert request.url.startswith(f"http://127.0.0.1:9/robot/send?timestamp={NOW_MS}&sign=")


def test_wecom_is_markdown_and_unsigned() -> None:
    request = render("wecom", NOTICE, url=WECOM_URL, secret=SECRET, now_ms=NOW_MS)
    assert request.url == WECOM_URL  # the key in the URL is the only credential
    body = body_of(request.body)
    assert body["msgtype"] == "markdown"
    content = body["markdown"]
    assert isinstance(content, dict)
    assert content["content"].startswith('## <font color="warning">【冷链告警】')
    assert "gw-truck-3/probe-1" in content["content"]
    assert set(body) == {"msgtype", "markdown"}
    assert webhooks.SIGNATURE_HEADER not in request.headers


def test_feishu_signs_the_body_as_documented() -> None:
    request = render("feishu", NOTICE, url=FEISHU_URL, secret=SECRET, now_ms=NOW_MS)
    timestamp = NOW_MS // 1000
    # Recipe (open.feishu.cn, 签名校验): HmacSHA256 KEYED with f"{timestamp}\n{secret}" over an empty
    # message, Base64; timestamp in seconds, sent as a string in the body.
    key = f"{timestamp}\n{SECRET.decode()}".encode()
    expected_sign = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    body = body_of(request.body)
    assert body == {
        "timestamp": str(timestamp),
        "sign": expected_sign,
        "msg_type": "text",
        "content": {"text": body["content"]["text"]},  # type: ignore[index]
    }
    assert body["content"]["text"].startswith("【冷链告警】")  # type: ignore[index]
    assert request.url == FEISHU_URL


def test_feishu_without_a_secret_sends_no_signature_fields() -> None:
    body = body_of(render("feishu", NOTICE, url=FEISHU_URL, secret=None, now_ms=NOW_MS).body)
    assert set(body) == {"msg_type", "content"}


def test_generic_is_signed_with_our_scheme() -> None:
    request = render(NotificationFormat.generic, NOTICE, url="http://hooks.local/alarm", secret=SECRET, now_ms=NOW_MS)
    assert webhooks.verify(SECRET, request.headers[webhooks.SIGNATURE_HEADER], request.body, now_s=NOW_MS // 1000)
    assert request.headers[webhooks.EVENT_ID_HEADER] == alarm_event_id(NOTICE) == "alarm:al-7:open:0"
    body = body_of(request.body)
    assert body["type"] == "alarm"
    assert body["event_id"] == "alarm:al-7:open:0"
    assert msgspec.convert(body["notice"], AlarmNotice) == NOTICE


def test_generic_takes_the_outbox_event_id() -> None:
    request = render("generic", NOTICE, url="http://h/", secret=SECRET, now_ms=NOW_MS, event_id="evt-99")
    assert request.headers[webhooks.EVENT_ID_HEADER] == "evt-99"
    assert body_of(request.body)["event_id"] == "evt-99"


def test_generic_refuses_to_go_unsigned() -> None:
    with pytest.raises(NotifyError, match="signed"):
        render("generic", NOTICE, url="http://h/", secret=None, now_ms=NOW_MS)


def test_english_is_available() -> None:
    body = body_of(render("feishu", NOTICE, url=FEISHU_URL, secret=None, now_ms=NOW_MS, language="en").body)
    text = body["content"]["text"]  # type: ignore[index]
    assert text.startswith("[Cold-chain alarm] out_of_range")
    assert "Started: 2024-05-29 16:26:40 UTC" in text


def test_unknown_language_and_format_are_refused() -> None:
    with pytest.raises(NotifyError, match="language"):
        render("wecom", NOTICE, url=WECOM_URL, secret=None, now_ms=NOW_MS, language="fr")
    with pytest.raises(ValueError, match="slack"):
        render("slack", NOTICE, url=WECOM_URL, secret=None, now_ms=NOW_MS)


def test_closed_alarm_missing_value_and_escalation() -> None:
    closed = replace(NOTICE, state="closed", value=None, escalation=2)
    text = body_of(render("feishu", closed, url=FEISHU_URL, secret=None, now_ms=NOW_MS).body)["content"]["text"]  # type: ignore[index]
    assert text.startswith("【冷链告警·已恢复】")
    assert "无读数" in text
    assert "升级: 第 2 次" in text
    assert alarm_event_id(closed) == "alarm:al-7:closed:2"


def test_unknown_kinds_pass_through_untranslated() -> None:
    odd = replace(NOTICE, kind="new_detector_x")
    text = body_of(render("feishu", odd, url=FEISHU_URL, secret=None, now_ms=NOW_MS).body)["content"]["text"]  # type: ignore[index]
    assert "类型: new_detector_x" in text


def test_a_long_message_is_cut() -> None:
    long = replace(NOTICE, message="温" * 5000)
    body = body_of(render("wecom", long, url=WECOM_URL, secret=None, now_ms=NOW_MS).body)
    content = body["markdown"]["content"]  # type: ignore[index]
    assert "温" * MESSAGE_MAX_CHARS + "…" in content
    assert len(content.encode()) < 4096  # WeCom's markdown limit


def test_endpoint_config_accepts_every_format_and_claim() -> None:
    for fmt in ["generic", "dingtalk", "wecom", "feishu", "claim"]:
        endpoint = msgspec.convert({"name": "x", "url": "http://h/", "format": fmt}, Endpoint)
        assert endpoint.format == fmt
        assert endpoint.timeout_s == 5.0
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"name": "x", "url": "http://h/", "format": "slack"}, Endpoint)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"name": "x", "url": "http://h/", "format": "wecom", "secret": "inline"}, Endpoint)


def test_endpoint_repr_hides_the_credential_in_the_url() -> None:
    endpoint = Endpoint(name="ops", url=WECOM_URL, format="wecom")
    assert "693a91f6" not in repr(endpoint)
    assert "693a91f6" not in f"{endpoint}"
    assert redact_url(WECOM_URL) == "https://qyapi.weixin.qq.com/…"


def test_endpoint_secret_from_file_or_env(tmp_path, monkeypatch) -> None:
    path = tmp_path / "shop.secret"
    path.write_text("shop-secret-0123456789\n")
    assert Endpoint(name="shop", url="http://h/", format="claim", secret_file=str(path)).load_secret() == (
        b"shop-secret-0123456789"
    )
    monkeypatch.setenv("CC_TEST_ROBOT_SECRET", "SECabcdefabcdefabcdef")
    ding = Endpoint(name="ding", url=DINGTALK_URL, format="dingtalk", secret_env="CC_TEST_ROBOT_SECRET")
    assert ding.load_secret() == b"SECabcdefabcdefabcdef"
    assert Endpoint(name="wx", url=WECOM_URL, format="wecom").load_secret() is None


def test_signed_endpoints_need_a_secret_and_errors_do_not_leak_it(tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs secret_file or secret_env"):
        Endpoint(name="shop", url="http://h/", format="claim").load_secret()
    short = tmp_path / "short"
    short.write_text("tiny-secret")
    with pytest.raises(ConfigError) as caught:
        Endpoint(name="shop", url="http://h/", format="claim", secret_file=str(short)).load_secret()
    assert "tiny-secret" not in str(caught.value)


def test_signatures_match_values_computed_with_openssl() -> None:
    # printf '1717000000000\nSECdemo0123456789' | openssl dgst -sha256 -hmac 'SECdemo0123456789' -binary | base64
    assert dingtalk_sign(b"SECdemo0123456789", 1_717_000_000_000) == "myb3V7QQ8oeTDWFx95XUxwY7j1E/APDpZ8JLI5yoXow="
    # printf '' | openssl dgst -sha256 -hmac "$(printf '1717000000\ndemo-feishu-secret')" -binary | base64
    assert feishu_sign(b"demo-feishu-secret", 1_717_000_000) == "QhvcXppQYHW6OL0CHzhFJ8tBKyDRxxy+JxJZ8mG2BbM="
