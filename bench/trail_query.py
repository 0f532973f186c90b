"""Trail queries on a month-sized store: p50/p99 of building an order's or a lot's trail
(``hub.traceability.trail.build_trail``) and of ``GET /public/v1/keys/{key}`` in-process.
Not a test: it prints figures, it never passes or fails.

The store (hub.store schema, written directly for speed; synchronous=OFF while loading only):
- ``rollups``: 30 days of 5-minute temperature rollups for 500 nodes (one series per node);
- ``tag_reads``: lots of 25 cases travelling farm -> packhouse -> cold store -> truck -> courier box
  (pickup at each node, delivery at the end; the newest lots are still on the way), fixed readers
  at cold stores re-observing every case every few hours;
- ``orders``/``order_items``: orders of 1-2 cases, and orders naming only the lot (their trail is the
  whole lot's); ``alarms`` (about one per node per day, most excursions), ``claims`` on some.

Run: PYTHONPATH=. .venv/bin/python bench/trail_query.py [--nodes 500 --days 30 --lots 2000 --queries 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from hub.custody import stays_of
from hub.db import Database
from hub.schema import ROLLUP_BUCKET_MS
from hub.store import IngestWriter
from hub.traceability import keys
from hub.traceability.model import NodeInfo
from hub.traceability.public import PublicService, add_public_routes
from hub.traceability.settings import PublicSettings
from hub.traceability.trail import _delivered, build_trail

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
SECRET = b"bench-buyer-key-secret-0123456789"
ROUTE = ("farm", "packhouse", "cold_store", "reefer_truck", "courier_box")
EXCURSION = ("out_of_range", "cumulative_time_out_of_range", "mkt_over_limit")
OTHER = ("rate_of_change", "stuck_sensor", "silent_sensor")


def node_id(n: int) -> str:
    return f"gw-{n:04d}"


def build_store(db: Path, args: argparse.Namespace, rng: random.Random) -> dict[str, object]:
    IngestWriter(db).close()  # the hub's own schema and migrations
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    end = int(time.time() * 1000) // ROLLUP_BUCKET_MS * ROLLUP_BUCKET_MS
    start = end - args.days * DAY_MS
    buckets = args.days * DAY_MS // ROLLUP_BUCKET_MS
    kinds = {node_id(n): ROUTE[n % len(ROUTE)] for n in range(args.nodes)}
    by_kind = {k: [g for g, kind in kinds.items() if kind == k] for k in ROUTE}

    t = time.perf_counter()
    conn.execute("BEGIN")
    for n in range(args.nodes):
        gw = node_id(n)
        base = -18.0 if n % 7 == 0 else 3.0
        conn.executemany(
            "INSERT INTO rollups (gateway_id, sensor_id, quantity, bucket_ms, min_value, max_value, sum_value, samples)"
            " VALUES (?, 's1', 'temperature', ?, ?, ?, ?, 60)",
            (
                (gw, start + b * ROLLUP_BUCKET_MS, base + (b % 7) / 10, base + 1 + (b % 5) / 10, 60 * (base + 0.5))
                for b in range(buckets)
            ),
        )
    conn.execute("COMMIT")
    rollup_s = time.perf_counter() - t

    t = time.perf_counter()
    reads: list[tuple[object, ...]] = []
    lots: list[tuple[str, list[str]]] = []
    item = 0
    for lot_n in range(args.lots):
        lot = f"LOT-{lot_n:05d}"
        epcs = []
        for _ in range(args.items_per_lot):
            item += 1
            epcs.append((f"urn:epc:id:sgtin:0614141.812345.{item}", f"3074257bf7194e4{item:09x}"))
        lots.append((lot, [uri for uri, _ in epcs]))
        at = start + rng.randrange(0, (args.days - 2) * DAY_MS)  # newest lots are still on the way
        for kind in ROUTE:
            gw = rng.choice(by_kind[kind])
            stay = rng.randrange(6 * HOUR_MS, 48 * HOUR_MS)
            if at > end:
                break
            for uri, hexa in epcs:
                reads.append((gw, "r1", hexa, uri, at + rng.randrange(60_000), -50.0, 1, "pickup", 0))
                if kind == "cold_store":  # fixed reader re-observes the case
                    for obs in range(at + args.observe_h * HOUR_MS, min(at + stay, end), args.observe_h * HOUR_MS):
                        reads.append((gw, "r1", hexa, uri, obs, -55.0, 1, "observe", 0))
            at += stay
            if kind == "courier_box" and at <= end:
                reads += [(gw, "r1", hexa, uri, at, -50.0, 1, "delivery", 0) for uri, hexa in epcs]
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO tag_reads (gateway_id, reader_id, epc_hex, epc_uri, ts_ms, rssi_dbm, antenna, action, seq)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        reads,
    )
    now = end
    conn.executemany(
        "INSERT INTO lots VALUES (?, ?, ?, ?)", [(lot, "80614141123458", "blueberries", now) for lot, _ in lots]
    )
    conn.executemany("INSERT INTO lot_items VALUES (?, ?)", [(lot, e) for lot, epcs in lots for e in epcs])
    item_orders: list[tuple[str, list[str]]] = []
    lot_orders: list[tuple[str, str]] = []
    for lot, epcs in lots:
        i = 0
        while i < len(epcs):
            size = rng.choice((1, 2))
            order = f"ord-{len(item_orders):06d}"
            item_orders.append((order, epcs[i : i + size]))
            i += size
        lot_orders.append((f"lord-{lot}", lot))
    conn.executemany(
        "INSERT INTO orders VALUES (?, ?, NULL, NULL, 'active', ?)", [(o, f"ref-{o}", now) for o, _ in item_orders]
    )
    conn.executemany("INSERT INTO order_items VALUES (?, ?)", [(o, e) for o, epcs in item_orders for e in epcs])
    conn.executemany(
        "INSERT INTO orders VALUES (?, ?, NULL, ?, 'active', ?)", [(o, f"ref-{o}", lot, now) for o, lot in lot_orders]
    )
    alarms = []
    for n in range(args.nodes):
        for d in range(args.days):
            if rng.random() < args.alarms_per_node_day:
                started = start + d * DAY_MS + rng.randrange(DAY_MS)
                kind = rng.choice(EXCURSION + EXCURSION + OTHER)
                alarms.append(
                    (
                        f"al-{len(alarms):06d}",
                        node_id(n),
                        "s1",
                        "temperature",
                        kind,
                        "critical",
                        "closed",
                        started,
                        started,
                        started,
                        started + HOUR_MS,
                        started + rng.randrange(10, 120) * 60_000,
                        9.5,
                        1800.0,
                        "x",
                    )
                )
    conn.executemany(
        "INSERT INTO alarms (alarm_id, gateway_id, sensor_id, quantity, kind, severity, state, started_ms, opened_ms,"
        " updated_ms, closed_ms, ended_ms, peak_value, duration_s, message) VALUES"
        " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        alarms,
    )
    claims = [
        (f"cl-{i:06d}", rng.choice(item_orders)[0], a[0], "refund", 10.0, None, "delivered", now)
        for i, a in enumerate(rng.sample(alarms, min(len(alarms), args.claims)))
    ]
    conn.executemany("INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)", claims)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {
        "rollup_s": rollup_s,
        "rest_s": time.perf_counter() - t,
        "item_orders": item_orders,
        "lot_orders": lot_orders,
        "lots": lots,
        "kinds": kinds,
        "end": end,
    }


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return sorted(out)


def row(name: str, ms: list[float], extra: str = "") -> None:
    p = lambda q: ms[min(len(ms) - 1, int(q / 100 * len(ms)))]  # noqa: E731
    print(
        f"{name:<58} {len(ms):>6} {p(50):>9.2f} {p(90):>9.2f} {p(99):>9.2f} {ms[-1]:>9.2f} {statistics.fmean(ms):>9.2f}  {extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--lots", type=int, default=2000)
    parser.add_argument("--items-per-lot", type=int, default=25)
    parser.add_argument(
        "--observe-h", type=int, default=4, help="fixed readers at cold stores re-read cases this often"
    )
    parser.add_argument("--alarms-per-node-day", type=float, default=1.0)
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=300, help="timed calls per order figure")
    parser.add_argument("--lot-queries", type=int, default=60, help="timed calls per whole-lot figure")
    parser.add_argument("--keep", help="build the store at this path and keep it")
    args = parser.parse_args()
    rng = random.Random(7)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.keep) if args.keep else Path(tmp) / "hub.sqlite3"
        built = build_store(db, args, rng)
        size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
        with closing(sqlite3.connect(db)) as conn:
            counts = {
                t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("rollups", "tag_reads", "lots", "lot_items", "orders", "order_items", "alarms", "claims")
            }
        print(
            f"store: {size / 2**20:,.1f} MiB on disk ({db.stat().st_size:,} bytes main file); built in "
            f"{built['rollup_s']:.1f} s (rollups) + {built['rest_s']:.1f} s (rest)"
        )
        print("rows: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))

        nodes = {g: NodeInfo(g, k, label_en=f"{k} {g}", city_en="Kunming") for g, k in built["kinds"].items()}  # type: ignore[union-attr]
        database = Database.of(db)
        conn = database.engine.connect()
        item_orders = built["item_orders"]
        lots = built["lots"]
        order_epcs = dict(item_orders)  # type: ignore[arg-type]
        sample = [rng.choice(item_orders)[0] for _ in range(args.queries)]  # type: ignore[arg-type]
        lot_sample = [rng.choice(lots) for _ in range(args.lot_queries)]  # type: ignore[arg-type]
        legs = [len(build_trail(conn, "x", order_epcs[o], nodes).legs) for o in sample[:50]]
        legs_lot = [len(build_trail(conn, "x", epcs, nodes).legs) for _, epcs in lot_sample[:20]]
        print(
            f"legs per trail: order of 1-2 cases mean {statistics.fmean(legs):.1f}, lot of {args.items_per_lot} "
            f"cases mean {statistics.fmean(legs_lot):.1f}"
        )
        print()
        print(f"{'what (ms)':<58} {'calls':>6} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9} {'mean':>9}")
        it = iter(sample * 2)
        row(
            "build_trail, order of 1-2 cases",
            timed(lambda: build_trail(conn, "o", order_epcs[next(it)], nodes), args.queries),
        )
        it2 = iter(lot_sample * 2)
        row(
            f"build_trail, whole lot ({args.items_per_lot} cases)",
            timed(lambda: build_trail(conn, "l", next(it2)[1], nodes), args.lot_queries),
        )
        it = iter(sample * 2)
        row("  of which custody.stays_of, order", timed(lambda: stays_of(conn, order_epcs[next(it)]), args.queries))
        it = iter(sample * 2)
        row("  of which trail._delivered, order", timed(lambda: _delivered(conn, order_epcs[next(it)]), args.queries))
        it2 = iter(lot_sample * 2)
        row("  of which custody.stays_of, lot", timed(lambda: stays_of(conn, next(it2)[1]), args.lot_queries))
        it2 = iter(lot_sample * 2)
        row("  of which trail._delivered, lot", timed(lambda: _delivered(conn, next(it2)[1]), args.lot_queries))

        settings = PublicSettings(base_url="https://trace.example.com", rate_per_s=1e9, rate_burst=10**9)
        service = PublicService(database, nodes, settings, SECRET)
        lit = iter(lot_sample * 2)
        row(
            "PublicService lot view, cache miss (per lot per second)",
            timed(lambda: service._lot_view(next(lit)[0]), args.lot_queries),
        )

        conn.rollback()  # end the read transaction the trails opened, so the writer can take the lock
        with database.writing() as wconn:
            now_ms = int(time.time() * 1000)
            order_keys = [keys.issue(wconn, SECRET, o, ttl_s=86400, now_ms=now_ms) for o in sample]
            lot_keys = [keys.issue(wconn, SECRET, f"lord-{lot}", ttl_s=86400, now_ms=now_ms) for lot, _ in lot_sample]
        app = FastAPI()
        add_public_routes(app, service)
        with TestClient(app) as client:
            for key in order_keys[:3]:
                assert client.get(f"/public/v1/keys/{key}").status_code == 200
            ki = iter(order_keys * 2)
            row(
                "GET /public/v1/keys/{key}, order of 1-2 cases (TestClient)",
                timed(lambda: client.get(f"/public/v1/keys/{next(ki)}"), args.queries),
            )
            ki = iter(lot_keys * 2)
            row(
                f"GET /public/v1/keys/{{key}}, lot order ({args.items_per_lot} cases)",
                timed(lambda: client.get(f"/public/v1/keys/{next(ki)}"), args.lot_queries),
            )
            row(
                "GET /public/v1/keys/<tampered> (404 before any lookup)",
                timed(lambda: client.get("/public/v1/keys/AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAA"), args.queries),
            )

        epcs = order_epcs[sample[0]]
        marks = ",".join("?" * len(epcs))
        print("\nquery plans (EXPLAIN QUERY PLAN):")
        for name, sql, params in (
            (
                "custody.stays_of",
                f"SELECT coalesce(epc_uri, epc_hex), epc_uri, epc_hex, gateway_id, ts_ms, action FROM tag_reads WHERE epc_uri IN ({marks}) OR epc_hex IN ({marks}) ORDER BY ts_ms",
                (*epcs, *epcs),
            ),
            (
                "trail._delivered",
                "SELECT action FROM tag_reads WHERE epc_uri = ? OR epc_hex = ? ORDER BY ts_ms DESC LIMIT 1",
                (epcs[0], epcs[0]),
            ),
            (
                "trail._leg rollups",
                "SELECT min(min_value), max(max_value), sum(sum_value), sum(samples) FROM rollups WHERE gateway_id = ? AND quantity = 'temperature' AND bucket_ms >= ? AND bucket_ms <= ?",
                ("gw-0001", 0, 1),
            ),
            (
                "trail._leg alarms",
                "SELECT alarm_id FROM alarms WHERE gateway_id = ? AND started_ms <= ? AND coalesce(ended_ms, ?) >= ? ORDER BY started_ms",
                ("gw-0001", 1, 2, 0),
            ),
            ("trail._has_claim", "SELECT 1 FROM claims WHERE alarm_id = ? LIMIT 1", ("al-000001",)),
        ):
            plan = "; ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
            print(f"  {name:<20} {plan}")
        conn.close()


if __name__ == "__main__":
    main()
