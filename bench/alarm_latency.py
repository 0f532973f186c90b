"""Alarm latency under load: publish -> alarm committed, and excursion end -> compensation webhook received.

Not a test: it prints figures and never passes or fails.

Setup as bench/ingest_e2e.py: a real Mosquitto, a real `coldchain hub run`, generator processes publishing
agent-format batches (QoS 1) from ``--gateways`` gateways bound to ``chilled-produce`` (all detectors run),
paced at ``--levels`` fractions (0.5 and 0.8) of the hub's ingest ceiling ``--ceiling`` (readings/s at batch
size ``--batch``; measured quickly first when not given). The reference receiver (hub/receiver.py,
``ReceiverServer``) runs in this process and takes the claims.

Beside the load, ``--alarm-gateways`` gateways are bound to a test profile that opens an excursion on the
first reading out of range (``alarm_dwell_s = 0``) and makes it critical on the next (``max_single_excursion_s``
1 ms); each carries one case (a pickup tag read) that one order bought, and the policy refunds critical
excursions. Each alarm gateway, in turn, ``--alarms`` times in all:

1. publishes a batch with two readings at 8 °C (wall-clock timestamps) and notes the wall time;
   (a) publish -> alarm committed, three ways: ``alarms.opened_ms`` (the hub's wall clock when it took the
   commit group, just before judging and committing it: a lower bound) minus the publish time; the
   receipt's ``ts_ms`` (the hub's wall clock when the commit holding the batch, and so the alarm, completed:
   the figure itself, one machine's clock) minus it; and the receipt arriving on the gateway's ``ack``
   topic (one broker hop more: an upper bound);
2. right after the receipt, publishes the closing reading (2 °C): the excursion closes, the claim is
   committed with it and the outbox dispatcher posts it; (b) closing publish -> the receiver has accepted
   the claim (taken when its handler returns).

Run: PYTHONPATH=. .venv/bin/python bench/alarm_latency.py --ceiling 60000   (needs mosquitto; ~3 minutes)
     PYTHONPATH=. .venv/bin/python bench/alarm_latency.py --alarms 500       (longer; measures the ceiling)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.ingest_e2e import (
    CHILLED_PRODUCE,
    TOKEN,
    Generator,
    HubProcess,
    broker_process,
    commit_rate,
    gateway_ids,
    machine,
    measure_hub,
    start_broker,
)
from coldchain.messages import Quantity, Reading, Receipt, TagAction, TagRead, TelemetryBatch, decode, encode
from hub.receiver import ReceiverServer, create_receiver_app

SECRET = b"bench-claims-secret-0123456789abcdef"
TEST_PROFILE = """
[profiles.alarm-test]
# Opens on the first reading out of range, critical on the next; the other detectors kept quiet.
temp_low_c = 0.0
temp_high_c = 4.0
alarm_dwell_s = 0
max_single_excursion_s = 0.001
max_cumulative_excursion_s = 86400
hysteresis_c = 0.3
door_rate_c_per_min = 100000
sustained_rate_c_per_min = 100000
fluctuation_z = 100000
"""
POLICY = """
endpoint = "shop-claims"

[[rules]]
min_severity = "critical"
action = "refund"
refund_percent = 30
"""
ASGI = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


class ClaimClock:
    """ASGI wrapper around the reference receiver: notes when each claim's POST was answered."""

    def __init__(self, app: ASGI) -> None:
        self.app = app
        self.arrived: dict[tuple[str, int], float] = {}
        self.changed = threading.Condition()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/claims":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        status: list[int] = []

        async def receive_body() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive_body, send_status)
        now = time.time()
        if status == [200]:
            excursion = json.loads(b"".join(chunks))["excursion"]
            with self.changed:
                self.arrived.setdefault((excursion["gateway_id"], excursion["started_ms"]), now)
                self.changed.notify_all()

    def wait(self, key: tuple[str, int], timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while key not in self.arrived:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.changed.wait(remaining)
            return self.arrived[key]


class Injector:
    """One paho client publishing the excursions (QoS 1) and watching the hub's receipts."""

    def __init__(self, port: int, gateways: list[str]) -> None:
        self.receipts: dict[str, tuple[int, float, int]] = {}  # acked_seq, arrival (wall s), receipt ts_ms
        self.changed = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"inj-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(100)
        ready = threading.Event()

        def on_connect(client: paho.Client, *_args: object) -> None:
            client.subscribe([(f"cc/v1/gw/{gateway}/ack", 1) for gateway in gateways])
            ready.set()

        self.client.on_connect = on_connect
        self.client.on_message = self._on_receipt
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        ready.wait(10)
        time.sleep(0.3)

    def _on_receipt(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.time()
        receipt = decode(bytes(msg.payload), Receipt)
        with self.changed:
            if receipt.acked_seq > self.receipts.get(receipt.gateway_id, (0, 0.0, 0))[0]:
                self.receipts[receipt.gateway_id] = (receipt.acked_seq, now, receipt.ts_ms)
            self.changed.notify_all()

    def publish(self, batch: TelemetryBatch) -> float:
        """Publish; return the wall time just before the PUBLISH left."""
        payload = encode(batch)
        sent = time.time()
        self.client.publish(f"cc/v1/gw/{batch.gateway_id}/telemetry", payload, qos=1)
        return sent

    def wait_receipt(self, gateway_id: str, seq: int, timeout_s: float) -> tuple[float, int] | None:
        """The first receipt covering ``seq``: when it arrived (wall s) and its ``ts_ms``, the hub's
        wall clock when the commit that stored ``seq`` completed."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while self.receipts.get(gateway_id, (0, 0.0, 0))[0] < seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.changed.wait(remaining)
            _, arrived, committed_ms = self.receipts[gateway_id]
            return arrived, committed_ms

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Sample:
    gateway_id: str
    started_ms: int
    open_published: float
    receipt: float | None
    committed_ms: int | None = None
    close_published: float | None = None
    claim: float | None = None
    opened_ms: int | None = None


@dataclass
class LevelResult:
    level: float
    offered: float
    achieved: float
    samples: list[Sample] = field(default_factory=list)
    backlog_end: int = 0
    cores: dict[str, float] = field(default_factory=dict)


def epc_of(n: int) -> str:
    return f"3074257bf7194e40{0x7D1 + n:08x}"  # SGTIN-96 hex, serials 2001, 2002, ...


def cycle(
    injector: Injector,
    claims: ClaimClock,
    gateway_id: str,
    count: int,
    samples: list[Sample],
    pause_s: float,
) -> None:
    """`count` excursions on one alarm gateway, one after the other."""
    boot = uuid.uuid4().hex
    seq = 1
    last_ts = 0
    for _ in range(count):
        seq += 1
        ts = max(int(time.time() * 1000), last_ts + 1)
        readings = [
            Reading("chiller", Quantity.TEMPERATURE, ts, 8.0),
            Reading("chiller", Quantity.TEMPERATURE, ts + 1, 8.0),
        ]
        sample = Sample(gateway_id, ts, injector.publish(TelemetryBatch(gateway_id, boot, seq, 1, readings)), None)
        samples.append(sample)
        receipt = injector.wait_receipt(gateway_id, seq, 60)
        if receipt is not None:
            sample.receipt, sample.committed_ms = receipt
        seq += 1
        last_ts = max(int(time.time() * 1000), ts + 2)
        closing = [Reading("chiller", Quantity.TEMPERATURE, last_ts, 2.0)]
        sample.close_published = injector.publish(TelemetryBatch(gateway_id, boot, seq, 1, closing))
        sample.claim = claims.wait((gateway_id, ts), 60)
        time.sleep(pause_s)


def setup_custody(hub: HubProcess, injector: Injector, alarm_gateways: list[str]) -> None:
    """One order per alarm gateway, its case picked up by that gateway (seq 1 of its stream)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    now = int(time.time() * 1000)
    for n, gateway in enumerate(alarm_gateways):
        response = httpx.post(
            f"{hub.api_url}/api/v1/orders",
            json={"order_id": f"order-{gateway}", "buyer_ref": f"buyer-{n}", "items": [epc_of(n)]},
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 201, response.text
        pickup = TagRead("reader", epc_of(n), None, now - 60_000, action=TagAction.PICKUP)
        injector.publish(
            TelemetryBatch(
                gateway, uuid.uuid4().hex, 1, 1, [Reading("chiller", Quantity.TEMPERATURE, now - 60_000, 2.5)], [pickup]
            )
        )
    for gateway in alarm_gateways:
        assert injector.wait_receipt(gateway, 1, 30) is not None, f"no receipt for {gateway}'s pickup"


def run_level(
    root: Path,
    level: float,
    ceiling: float,
    args: argparse.Namespace,
    *,
    load_gateways: list[str],
    alarm_gateways: list[str],
) -> LevelResult:
    work = root / f"level-{level:.2f}"
    broker = start_broker(work / "broker")
    claims = ClaimClock(create_receiver_app([SECRET]))
    receiver = ReceiverServer(claims, port=0)  # type: ignore[arg-type]  # any ASGI app serves
    receiver.start()
    (work / "hub").mkdir(parents=True, exist_ok=True)
    secret_file = work / "hub" / "claims-secret"
    secret_file.write_bytes(SECRET)
    (work / "hub" / "compensation.toml").write_text(POLICY)
    bindings = dict.fromkeys(load_gateways, "chilled-produce") | dict.fromkeys(alarm_gateways, "alarm-test")
    hub = HubProcess(
        work / "hub",
        broker.port,
        bindings,
        profiles_text=CHILLED_PRODUCE + TEST_PROFILE,
        top_toml=f'compensation_file = "{work / "hub" / "compensation.toml"}"',
        tables_toml=(
            f'[[endpoints]]\nname = "shop-claims"\nurl = "{receiver.url}/claims"\nformat = "claim"\n'
            f'secret_file = "{secret_file}"\n' + ("[ingest]\n" + "\n".join(args.ingest) + "\n" if args.ingest else "")
        ),
    )
    injector: Injector | None = None
    stop = None
    loader: threading.Thread | None = None
    try:
        hub.start()
        injector = Injector(broker.port, alarm_gateways)
        setup_custody(hub, injector, alarm_gateways)
        offered = level * ceiling
        generator = Generator(
            broker.port, load_gateways, args.publishers, args.batch, int(time.time() * 1000) - 300_000
        )
        stop = generator.ctx.Event()
        published: list[Any] = []

        def load() -> None:
            published.append(generator.run(10**9, rate_msgs_s=offered / args.batch, stop=stop))

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(2.0 + args.warmup)  # spawn and connect (1.5 s), then the load settles
        since_ms = int(time.time() * 1000)
        hub_ps, broker_ps = hub.ps(), broker_process(broker)
        cpu0 = {"hub": sum(hub_ps.cpu_times()[:2]), "broker": sum(broker_ps.cpu_times()[:2])}
        wall0 = time.time()
        samples: list[Sample] = []
        per_gateway = [
            args.alarms // len(alarm_gateways) + (n < args.alarms % len(alarm_gateways))
            for n in range(len(alarm_gateways))
        ]
        threads = [
            threading.Thread(target=cycle, args=(injector, claims, g, k, samples, args.pause), daemon=True)
            for g, k in zip(alarm_gateways, per_gateway, strict=True)
        ]
        for n, thread in enumerate(threads):
            thread.start()
            time.sleep(args.pause / len(threads) + 0.05 * n)  # stagger the gateways
        for thread in threads:
            thread.join()
        wall = time.time() - wall0
        cores = {
            "hub": (sum(hub_ps.cpu_times()[:2]) - cpu0["hub"]) / wall,
            "broker": (sum(broker_ps.cpu_times()[:2]) - cpu0["broker"]) / wall,
        }
        backlog = generator.published_now() * args.batch - hub.stored_readings()
        stop.set()
        loader.join(120)
        achieved = commit_rate(hub, since_ms)
        if published:
            cores["generator"] = published[0].cpu_s / published[0].elapsed_s
        opened = {
            (gateway, started): opened_ms
            for gateway, started, opened_ms in hub.query(
                "SELECT gateway_id, started_ms, opened_ms FROM alarms WHERE kind = 'out_of_range'"
            )
        }
        for sample in samples:
            sample.opened_ms = opened.get((sample.gateway_id, sample.started_ms))
        return LevelResult(level, offered, achieved.per_s, samples, max(0, backlog), cores)
    finally:
        if stop is not None:
            stop.set()
        if loader is not None:
            loader.join(60)
        if injector is not None:
            injector.close()
        hub.stop()
        receiver.stop()
        broker.stop()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(-(-q * len(ordered) // 100)) - 1))] if ordered else float("nan")


def describe(values: list[float]) -> str:
    if not values:
        return f"{'-':>8} {'-':>8} {'-':>8}"
    return f"{percentile(values, 50):>8.0f} {percentile(values, 99):>8.0f} {max(values):>8.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ceiling", type=float, default=0.0, help="hub ingest ceiling, readings/s at --batch")
    parser.add_argument("--batch", type=int, default=100, help="readings per background batch")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--alarms", type=int, default=100, help="alarms per load level")
    parser.add_argument("--alarm-gateways", type=int, default=4)
    parser.add_argument("--gateways", type=int, default=200, help="background gateways")
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between two excursions of a gateway")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--ingest", action="append", default=[], metavar="KEY=VALUE", help="an [ingest] setting of the hub (repeatable)"
    )
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    if len(set(args.levels)) != len(args.levels):
        # Each level runs in a directory named after it: a repeated level would find the last one's hub and store.
        parser.error("--levels must all differ; run the command again to repeat a level")
    print(machine())
    print("command: PYTHONPATH=. " + shlex.join([sys.executable, *sys.argv]))
    tmp = None if args.keep else tempfile.TemporaryDirectory()
    root = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    load_gateways = gateway_ids(args.gateways)
    alarm_gateways = gateway_ids(args.alarm_gateways, "gw-alarm")
    try:
        ceiling = args.ceiling
        if not ceiling:
            _gen, drain, live, _gen_live, _check = measure_hub(
                root / "ceiling",
                args.batch,
                150_000,
                load_gateways,
                args.publishers,
                ingest_toml="\n".join(args.ingest),
            )
            ceiling = live.per_s
            print(
                f"ceiling measured at batch {args.batch}: hub drain {drain.per_s:,.0f} readings/s (generators idle),"
                f" live {live.per_s:,.0f} readings/s (generators publishing beside it); using the live figure"
            )
        results = [
            run_level(root, level, ceiling, args, load_gateways=load_gateways, alarm_gateways=alarm_gateways)
            for level in args.levels
        ]
        print(
            f"\nbackground: {args.gateways} gateways, batches of {args.batch} readings, {args.publishers} publisher"
            f" processes; ceiling {ceiling:,.0f} readings/s; {args.alarm_gateways} alarm gateways, {args.alarms}"
            f" alarms per level; latencies in ms"
        )
        print(
            f"{'load':>5} {'offered/s':>10} {'stored/s':>9} {'n':>4} | {'publish -> opened_ms':^26} |"
            f" {'publish -> committed':^26} | {'publish -> receipt':^26} | {'close -> webhook':^26} |"
            " backlog, cores hub/broker/gen"
        )
        quantiles = f"{'p50':>8} {'p99':>8} {'max':>8}"
        print(f"{'':>31} | {quantiles} | {quantiles} | {quantiles} | {quantiles} |")
        for r in results:
            opened = [s.opened_ms - s.open_published * 1000 for s in r.samples if s.opened_ms is not None]
            committed = [s.committed_ms - s.open_published * 1000 for s in r.samples if s.committed_ms is not None]
            receipt = [(s.receipt - s.open_published) * 1000 for s in r.samples if s.receipt is not None]
            claim = [
                (s.claim - s.close_published) * 1000 for s in r.samples if s.claim is not None and s.close_published
            ]
            print(
                f"{r.level:>5.0%} {r.offered:>10,.0f} {r.achieved:>9,.0f} {len(r.samples):>4} | {describe(opened)} |"
                f" {describe(committed)} | {describe(receipt)} | {describe(claim)} | {r.backlog_end:,} readings,"
                f" {r.cores.get('hub', 0):.2f}/{r.cores.get('broker', 0):.2f}/{r.cores.get('generator', 0):.2f}"
            )
            missing = [s for s in r.samples if s.opened_ms is None or s.claim is None or s.receipt is None]
            if missing:
                print(f"      {len(missing)} of {len(r.samples)} excursions lack an alarm row, receipt or claim")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
