"""The livestream widget in a real browser (Debian's Chromium, headless) against a real hub and broker.

A lot travels farm -> cold store -> reefer truck -> courier box; the page follows the live temperature
over Server-Sent Events, turns red while the truck's excursion is open and amber once the buyer's order
is compensated, and keeps the last state, marked, when the hub goes away.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from coldchain import topics
from coldchain.messages import Quantity, Reading, TagAction, TagRead, TelemetryBatch, encode
from tests.support.hub import Hub
from tests.support.mqtt import TestClient
from tests.support.servers import Mosquitto, free_port, require_binary, unavailable

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    unavailable("playwright is not installed (pip install playwright)", module=True)

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "widget"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOT = "LOT-2026-0303-A"
DASH = "\u2013"  # the en dash between a band's min and max
STALE_ZH = "数据更新中断，显示最近状态"  # noqa: RUF001  (the page's own full-width comma)
STALE_EN = "Connection lost — showing last known state"
MISSING_LOT_ZH = "缺少参数 lot（批次号）"  # noqa: RUF001
GTIN = "80614141123458"
CASE_URI = "urn:epc:id:sgtin:0614141.812345.2001"
CASE_HEX = "3074257bf7194e40000007d1"
# Gateways and the nodes they ride with, in journey order.
FARM, STORE, TRUCK, COURIER = "gw-farm", "gw-store", "gw-truck", "gw-courier"
NODES = f"""
[[nodes]]
gateway_id = "{FARM}"
kind = "farm"
label_zh = "云南普洱茶园"
label_en = "Pu'er tea garden"

[[nodes]]
gateway_id = "{STORE}"
kind = "cold_store"
label_zh = "昆明冷库"
label_en = "Kunming cold store"

[[nodes]]
gateway_id = "{TRUCK}"
kind = "reefer_truck"

[[nodes]]
gateway_id = "{COURIER}"
kind = "courier_box"
"""
# Thresholds in seconds of reading time: out of range 2 s opens, 4 s makes it critical.
PROFILES = f"""
[profiles.test-chilled]
temp_low_c = 0.0
temp_high_c = 8.0
alarm_dwell_s = 2
max_single_excursion_s = 4
max_cumulative_excursion_s = 3600
hysteresis_c = 0.3
silent_after_s = 3600

[bindings]
nodes = {{ "{TRUCK}" = "test-chilled", "{COURIER}" = "test-chilled" }}
"""
POLICY = """
endpoint = "shop-claims"

[[rules]]
min_severity = "critical"
action = "refund"
refund_percent = 30
"""


class Clock:
    """Reading time for the scenario: starts ten minutes back and never runs past the wall clock."""

    def __init__(self) -> None:
        self.ms = int(time.time() * 1000) - 600_000

    def next(self, step_ms: int = 1000) -> int:
        self.ms = min(self.ms + step_ms, int(time.time() * 1000))
        return self.ms


class Gateways:
    """Publishes telemetry batches as several gateways would, each with its own seq, and waits for receipts."""

    def __init__(self, broker: Mosquitto, clock: Clock) -> None:
        self.client = TestClient(broker.port)
        self.clock = clock
        self.seqs: dict[str, int] = {}
        self.boot_id = uuid.uuid4().hex

    def send(self, gateway_id: str, temps_c: Sequence[float] = (), action: TagAction | None = None) -> None:
        if gateway_id not in self.seqs:
            self.client.watch_receipts(gateway_id)
        seq = self.seqs[gateway_id] = self.seqs.get(gateway_id, 0) + 1
        tag_reads = []
        if action is not None:
            tag_reads.append(TagRead("reader", CASE_HEX, CASE_URI, self.clock.next(), -50.0, 1, action))
        readings = [Reading("air", Quantity.TEMPERATURE, self.clock.next(), value) for value in temps_c]
        batch = TelemetryBatch(gateway_id, self.boot_id, seq, 1, readings, tag_reads)
        self.client.publish(topics.topic_for(gateway_id, topics.Channel.TELEMETRY), encode(batch))
        self.client.wait_receipt(gateway_id, seq)

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_binary("chromium", "chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def start_hub(hub_factory: Callable[..., Hub], broker: Mosquitto, tmp_path: Path) -> Hub:
    (tmp_path / "profiles.toml").write_text(PROFILES)
    (tmp_path / "compensation.toml").write_text(POLICY)
    hub = hub_factory(
        broker,
        top_toml=f'profiles_file = "{tmp_path / "profiles.toml"}"\n'
        f'compensation_file = "{tmp_path / "compensation.toml"}"',
        tables_toml=f"""
[[endpoints]]
name = "shop-claims"
url = "http://127.0.0.1:{free_port()}/claims"
format = "claim"
secret_file = "{tmp_path / "claims-secret"}"
{NODES}""",
    )
    (tmp_path / "claims-secret").write_bytes(b"claims-secret-for-tests-0123456789")
    # The API port is only known now: QR links must point at this hub.
    config = hub.db_path.parent / "hub.toml"
    config.write_text(config.read_text() + f'\n[public]\nbase_url = "{hub.api_url}"\n')
    return hub.start()


def open_widget(
    browser: Browser, hub: Hub, query: str, width: int, height: int, errors: list[str], *, sse: bool = True
) -> Page:
    """A page showing the widget; uncaught script errors go to ``errors``; ``sse=False``: a browser without it."""
    page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if not sse:
        page.add_init_script("delete window.EventSource")
    page.goto(f"{hub.api_url}/widget/?lot={LOT}&{query}")
    return page


def shot(page: Page, name: str, *, transparent: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), omit_background=transparent)


def test_the_widget_follows_the_lot_live_and_keeps_its_last_state_offline(
    broker: Mosquitto, hub_factory: Callable[..., Hub], browser: Browser, tmp_path: Path
) -> None:
    hub = start_hub(hub_factory, broker, tmp_path)
    declared = hub.post("/api/v1/lots", {"lot_id": LOT, "gtin": GTIN, "product": "普洱生茶饼", "items": [CASE_URI]})
    assert declared.status_code in (200, 201), declared.text
    ordered = hub.post("/api/v1/orders", {"order_id": "live-order-1", "buyer_ref": "viewer-42", "items": [CASE_URI]})
    assert ordered.status_code == 201, ordered.text

    # The journey so far: farm, then the cold store, then on the truck at about 3 °C.
    errors: list[str] = []
    clock = Clock()
    gateways = Gateways(broker, clock)
    gateways.send(FARM, [14.0, 15.5], action=TagAction.PICKUP)
    gateways.send(STORE, [1.5, 2.0], action=TagAction.OBSERVE)
    gateways.send(TRUCK, [3.1, 2.9, 3.0], action=TagAction.PICKUP)

    portrait = open_widget(browser, hub, "", 540, 960, errors)
    expect(portrait.locator("#temp")).to_have_text("3.0", timeout=15_000)
    expect(portrait.locator("#badge")).to_have_text("冷链完好")
    expect(portrait.locator("#badge")).to_have_attribute("data-status", "intact")
    expect(portrait.locator("#node")).to_contain_text("冷藏车")
    expect(portrait.locator("#chain .leg")).to_have_count(3)
    expect(portrait.locator("#chain .leg").nth(0)).to_contain_text("云南普洱茶园")
    expect(portrait.locator("#chain .leg").nth(0)).to_contain_text(f"14.0{DASH}15.5 °C")
    expect(portrait.locator("#chain .leg").nth(1)).to_contain_text(f"1.5{DASH}2.0 °C")
    expect(portrait.locator("#chain .leg.leg-current")).to_contain_text(f"2.9{DASH}3.1 °C")
    expect(portrait.locator("#qr-caption")).to_have_text("扫码查看全程温度")
    expect(portrait.locator("#qr")).to_have_attribute("src", f"{hub.api_url}/public/v1/lots/{LOT}/qr.svg")
    portrait.wait_for_function("document.getElementById('qr').naturalWidth > 0")
    shot(portrait, "portrait-zh-intact.png")
    polling = open_widget(browser, hub, "lang=en", 540, 960, errors, sse=False)
    expect(polling.locator("#temp")).to_have_text("3.0", timeout=15_000)

    # A new reading reaches the open page without a reload (pushed over SSE).
    portrait.evaluate("window.__sameDocument = true")
    gateways.send(TRUCK, [5.5])
    expect(portrait.locator("#temp")).to_have_text("5.5", timeout=10_000)
    assert portrait.evaluate("window.__sameDocument") is True
    expect(polling.locator("#temp")).to_have_text("5.5", timeout=12_000)  # the 5 s polling fallback
    polling.close()

    # The truck's cooling fails: 10 °C for 6 s of readings, past the dwell and the critical limit.
    gateways.send(TRUCK, [10.0, 10.5, 11.0, 11.2, 11.0, 10.8, 10.6])
    expect(portrait.locator("#badge")).to_have_text("温度异常·处理中", timeout=10_000)
    expect(portrait.locator("#badge")).to_have_attribute("data-status", "excursion")
    expect(portrait.locator("#chain .leg.leg-current .warn")).to_have_count(1)
    expect(portrait.locator("#temp")).to_have_text("10.6")
    shot(portrait, "portrait-zh-excursion-open.png")

    # Back in range: the alarm closes, the policy pays the order holding the case.
    gateways.send(TRUCK, [4.0, 3.2])
    expect(portrait.locator("#badge")).to_have_text("温度异常·已赔付", timeout=10_000)
    expect(portrait.locator("#badge")).to_have_attribute("data-status", "excursion_compensated")
    assert hub.scalar("SELECT count(*) FROM claims WHERE order_id = 'live-order-1'") == 1

    # Handed to the courier: the chain grows a fourth leg, the warning stays on the truck's.
    gateways.send(COURIER, [4.2], action=TagAction.PICKUP)
    expect(portrait.locator("#chain .leg")).to_have_count(4, timeout=10_000)
    expect(portrait.locator("#node")).to_contain_text("快递箱")
    expect(portrait.locator("#temp")).to_have_text("4.2")
    expect(portrait.locator("#chain .leg").nth(2).locator(".warn")).to_have_count(1)
    expect(portrait.locator("#chain .leg .warn")).to_have_count(1)
    shot(portrait, "portrait-zh-compensated.png")

    landscape = open_widget(browser, hub, "lang=en&layout=landscape", 960, 540, errors)
    expect(landscape.locator("#badge")).to_have_text("Excursion, compensated", timeout=15_000)
    expect(landscape.locator("#node")).to_contain_text("Courier box")
    expect(landscape.locator("#chain .leg").nth(0)).to_contain_text("Pu'er tea garden")
    expect(landscape.locator("#qr-caption")).to_have_text("Scan for the full temperature trail")
    landscape.wait_for_function("document.getElementById('qr').naturalWidth > 0")
    shot(landscape, "landscape-en-compensated.png")

    overlay = open_widget(browser, hub, "layout=landscape&transparent=1", 1280, 720, errors)
    expect(overlay.locator("#temp")).to_have_text("4.2", timeout=15_000)
    assert overlay.evaluate("getComputedStyle(document.body).backgroundColor") == "rgba(0, 0, 0, 0)"
    overlay.wait_for_function("document.getElementById('qr').naturalWidth > 0")
    shot(overlay, "landscape-zh-transparent.png", transparent=True)
    overlay.close()

    # The hub goes away: the pages keep the last state and say the data is not live any more.
    gateways.close()
    assert hub.child.terminate(timeout_s=20) == 0  # a clean stop ends the viewers' open event streams too
    for page, mark in ((portrait, STALE_ZH), (landscape, STALE_EN)):
        expect(page.locator("#stale")).to_be_visible(timeout=25_000)
        expect(page.locator("#stale")).to_contain_text(mark)
        expect(page.locator("#temp")).to_have_text("4.2")
        expect(page.locator("#badge")).to_have_attribute("data-status", "excursion_compensated")
        expect(page.locator("#chain .leg")).to_have_count(4)
    shot(portrait, "portrait-zh-connection-lost.png")
    shot(landscape, "landscape-en-connection-lost.png")
    assert errors == []
    for page in (portrait, landscape):
        page.close()


def test_the_widget_shows_a_placeholder_before_any_data(
    broker: Mosquitto, hub_factory: Callable[..., Hub], browser: Browser, tmp_path: Path
) -> None:
    hub = start_hub(hub_factory, broker, tmp_path)
    page = open_widget(browser, hub, "lang=en", 540, 960, [])
    expect(page.locator("#placeholder")).to_have_text("No cold-chain record for this lot", timeout=15_000)
    missing = browser.new_page()
    missing.goto(f"{hub.api_url}/widget/")
    expect(missing.locator("#placeholder")).to_have_text(MISSING_LOT_ZH)
    for p in (page, missing):
        p.close()
