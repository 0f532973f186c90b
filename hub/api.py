"""The hub's HTTP API (FastAPI): thin routes over the read store and the ingest counters."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, cast

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

import coldchain
from coldchain.messages import Command, ConfigChange
from coldchain.topics import GATEWAY_ID_CHARS
from hub import orders
from hub.alarms import AlarmError
from hub.config import ApiToken
from hub.db import StoreError
from hub.ingest import IngestPipeline
from hub.metrics import exposition
from hub.store import IngestWriter, ReadStore
from hub.traceability import keys
from hub.traceability.epcis import query_events, trail_document
from hub.traceability.public import PublicService
from hub.traceability.trail import build_trail


class Health(BaseModel):
    """Liveness of the hub's parts."""

    status: str = Field(description="'ok' when the broker link is up, else 'degraded'")
    mqtt_connected: bool
    version: str
    ingest: dict[str, int] = Field(description="pipeline counters since start (stored, duplicates, rejected_*)")


class Gateway(BaseModel):
    """A gateway the hub has heard from."""

    gateway_id: str
    acked_seq: int = Field(description="cumulative receipt: every batch up to this seq is committed")
    boot_id: str | None
    first_seen: datetime
    last_seen: datetime
    batches: int
    readings: int
    status: str | None = Field(description="'online' or 'offline' from the gateway's birth / last will")


class Reading(BaseModel):
    """The newest value of one series."""

    gateway_id: str
    sensor_id: str
    quantity: str
    unit: str
    ts: datetime
    value: float
    quality: str


T = TypeVar("T")
UNITS = {"temperature": "°C", "humidity": "%RH"}


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class TokenChecker:
    """Accepts a bearer token whose SHA-256 matches a configured token holding ``scope``."""

    def __init__(self, tokens: Sequence[ApiToken], scope: str) -> None:
        self._tokens = [(bytes.fromhex(t.sha256), t.name) for t in tokens if scope in t.scopes]

    def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]
    ) -> None:
        self.actor(credentials)

    def actor(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]
    ) -> str:
        """The name of the token presented (recorded as who acted), or 401."""
        if credentials is not None:
            digest = hashlib.sha256(credentials.credentials.encode()).digest()
            # Compare against every hash so timing does not tell which one matched.
            matches = [name for known, name in self._tokens if hmac.compare_digest(digest, known)]
            if matches:
                return matches[0]
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )


class ScopeOnlyChecker:
    """Like ``TokenChecker``, but a known token without ``scope`` gets 403, not 401 (for ``/metrics``: a
    scraper configured with the wrong token should be told it is the wrong one, not that it is unknown)."""

    def __init__(self, tokens: Sequence[ApiToken], scope: str) -> None:
        self._scoped = TokenChecker(tokens, scope)
        self._known = [bytes.fromhex(t.sha256) for t in tokens]
        self._scope = scope

    def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]
    ) -> None:
        try:
            self._scoped.actor(credentials)
        except HTTPException:
            if credentials is not None:
                digest = hashlib.sha256(credentials.credentials.encode()).digest()
                # Every hash is compared (a list, not a short-circuiting any()) so timing tells nothing.
                if any([hmac.compare_digest(digest, known) for known in self._known]):  # noqa: C419
                    raise HTTPException(
                        status.HTTP_403_FORBIDDEN, f"this token lacks the {self._scope!r} scope"
                    ) from None
            raise


class CommandRequest(BaseModel):
    """A configuration change for one gateway, e.g. ``{"action": "set_sampling_interval", "interval_s": 2}``."""

    change: dict[str, object] = Field(
        description="set_sampling_interval {interval_s} | set_product_range {low_c, high_c} | set_custody_mode {mode}"
    )


class CommandStatus(BaseModel):
    """A command sent to a gateway and its answer."""

    command_id: str
    gateway_id: str
    status: str = Field(description="'sent', then 'accepted' or 'refused' when the gateway answers")
    reason: str | None
    config_version: int | None


class StaffAction(BaseModel):
    """Why staff acknowledge or close an alarm (recorded in the audit log with who and when)."""

    reason: str = Field(min_length=3, max_length=500)


class Alarm(BaseModel):
    """An alarm and where it stands in its lifecycle (open -> acknowledged -> closed)."""

    alarm_id: str
    gateway_id: str
    sensor_id: str
    quantity: str
    kind: str
    severity: str
    state: str
    started: datetime
    opened: datetime
    closed: datetime | None
    peak_value: float | None
    duration_s: float
    message: str
    acknowledged_by: str | None
    closed_by: str | None
    escalations: int


class OrderIn(BaseModel):
    """An order from the shop platform: items by EPC (URI or hex) and/or a lot; no personal data."""

    order_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    buyer_ref: str = Field(
        pattern=r"^[A-Za-z0-9_.:-]{1,128}$", description="an opaque reference; never a name, phone or address"
    )
    items: list[str] = Field(default_factory=list, max_length=1000)
    lot_id: str | None = Field(default=None, max_length=64)
    product: str | None = Field(default=None, max_length=64, description="profile name, for the compensation policy")


class LotIn(BaseModel):
    """A product lot on sale: its GTIN and the tagged cases (EPC URIs) that make it up."""

    lot_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,20}$", description="GS1 AI (10): at most 20 characters")
    gtin: str = Field(pattern=r"^\d{14}$")
    product: str | None = Field(default=None, max_length=64)
    items: list[str] = Field(default_factory=list, max_length=10_000)


class EpcisQuery(BaseModel):
    """Filters of the EPCIS event query: an item (EPC) or a lot, a time window, a CBV business step."""

    epc: str | None = None
    lot: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    biz_step: str | None = None


class KeyOut(BaseModel):
    """A buyer's link: give it to the buyer, the hub keeps only its hash."""

    url: str
    expires_ms: int


class Order(BaseModel):
    """An order as stored, with its claims."""

    order_id: str
    buyer_ref: str
    product: str | None
    lot_id: str | None
    status: str
    items: list[str]
    claims: list[dict[str, object]]


def get_store(request: Request) -> ReadStore:
    """The read store the app was built with."""
    store: ReadStore = request.app.state.store
    return store


StoreDep = Annotated[ReadStore, Depends(get_store)]


def staff_actor(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
) -> str:
    """The name of a token with the ``staff`` scope: recorded as who acknowledged or closed."""
    checker: TokenChecker = request.app.state.staff
    return checker.actor(credentials)


StaffActor = Annotated[str, Depends(staff_actor)]


def request_reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
) -> None:
    """Requires a token with the ``read`` scope (for routes defined where a checker is not in scope)."""
    checker: TokenChecker = request.app.state.reader
    checker.actor(credentials)


def create_app(
    store: ReadStore,
    tokens: Sequence[ApiToken],
    *,
    mqtt_connected: Callable[[], bool],
    ingest_counters: Callable[[], dict[str, int]],
    send_command: Callable[[Command], None],
    pipeline: IngestPipeline | None = None,
    metrics: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the API; every ``/api/v1`` route needs a bearer token with the ``read`` scope, and ``/metrics``
    (served only when ``metrics`` is given: the hub's registry, see ``hub.metrics``) one with ``metrics``."""
    app = FastAPI(title="coldchain hub", version=coldchain.__version__)
    app.state.store = store
    app.state.metrics = metrics
    app.state.reader = TokenChecker(tokens, "read")
    read_scope = [Depends(app.state.reader)]
    command_scope = [Depends(TokenChecker(tokens, "command"))]

    @app.get("/healthz", tags=["operations"])
    def healthz() -> Health:
        connected = mqtt_connected()
        return Health(
            status="ok" if connected else "degraded",
            mqtt_connected=connected,
            version=coldchain.__version__,
            ingest=ingest_counters(),
        )

    @app.get("/api/v1/gateways", dependencies=read_scope, tags=["gateways"])
    def list_gateways(store: StoreDep) -> list[Gateway]:
        return [
            Gateway(
                gateway_id=row.gateway_id,
                acked_seq=row.acked_seq,
                boot_id=row.boot_id,
                first_seen=_utc(row.first_seen_ms),
                last_seen=_utc(row.last_seen_ms),
                batches=row.batches,
                readings=row.readings,
                status=row.status,
            )
            for row in store.gateways()
        ]

    @app.get("/api/v1/readings/latest", dependencies=read_scope, tags=["readings"])
    def latest_readings(
        store: StoreDep,
        # pydantic's regex engine (Rust) has no \Z, and its $ matches only at the very end.
        gateway_id: Annotated[str | None, Query(pattern=f"^{GATEWAY_ID_CHARS}$")] = None,
    ) -> list[Reading]:
        return [
            Reading(
                gateway_id=row.gateway_id,
                sensor_id=row.sensor_id,
                quantity=row.quantity,
                unit=UNITS.get(row.quantity, ""),
                ts=_utc(row.ts_ms),
                value=row.value,
                quality=row.quality,
            )
            for row in store.latest(gateway_id)
        ]

    @app.post(
        "/api/v1/gateways/{gateway_id}/commands",
        dependencies=command_scope,
        tags=["gateways"],
        status_code=status.HTTP_202_ACCEPTED,
    )
    def send_gateway_command(
        gateway_id: Annotated[str, Path(pattern=f"^{GATEWAY_ID_CHARS}$")], body: CommandRequest
    ) -> CommandStatus:
        try:
            change = msgspec.convert(body.change, ConfigChange, strict=False)
        except msgspec.ValidationError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"invalid change: {exc}") from exc
        command = Command(
            command_id=uuid.uuid4().hex, gateway_id=gateway_id, issued_ms=int(time.time() * 1000), change=change
        )
        try:
            send_command(command)
        except StoreError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        return CommandStatus(
            command_id=command.command_id, gateway_id=gateway_id, status="sent", reason=None, config_version=None
        )

    @app.get("/api/v1/commands/{command_id}", dependencies=command_scope, tags=["gateways"])
    def command_status(command_id: str, store: StoreDep) -> CommandStatus:
        row = store.command(command_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such command")
        return CommandStatus(
            command_id=row.command_id,
            gateway_id=row.gateway_id,
            status=row.status,
            reason=row.reason,
            config_version=row.config_version,
        )

    _add_alarm_and_order_routes(app, tokens, pipeline)
    if metrics is not None:
        _add_metrics_route(app, tokens, metrics)
    return app


def _add_metrics_route(app: FastAPI, tokens: Sequence[ApiToken], registry: CollectorRegistry) -> None:
    """``GET /metrics`` for Prometheus-compatible scrapers (scope ``metrics``; docs/metrics.md)."""

    # A plain def: collecting may query the store, so it runs in the thread pool, not on the event loop.
    @app.get("/metrics", dependencies=[Depends(ScopeOnlyChecker(tokens, "metrics"))], tags=["operations"])
    def metrics(request: Request) -> Response:
        body, content_type = exposition(registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)


def _writer(pipeline: IngestPipeline | None) -> Callable[[Callable[[IngestWriter, int], T]], T]:
    """Runs a write serialised with ingest and maps its failures to HTTP answers."""

    def write(action: Callable[[IngestWriter, int], T]) -> T:
        if pipeline is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this hub has no writer")
        try:
            return pipeline.staff_action(action)
        except AlarmError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        except StoreError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc

    return write


def _add_alarm_and_order_routes(app: FastAPI, tokens: Sequence[ApiToken], pipeline: IngestPipeline | None) -> None:
    """Staff alarm handling (scope ``staff``), orders and lots (scope ``orders``), EPCIS queries (``read``)."""
    staff = TokenChecker(tokens, "staff")
    app.state.staff = staff
    orders_scope = [Depends(TokenChecker(tokens, "orders"))]
    write = _writer(pipeline)
    _add_alarm_routes(app, staff, write)
    _add_order_routes(app, orders_scope, write)
    _add_epcis_routes(app)


Write = Callable[[Callable[[IngestWriter, int], Any]], Any]


def _add_alarm_routes(app: FastAPI, staff: TokenChecker, write: Write) -> None:
    """List, acknowledge and close alarms; export investigations (scope ``staff``)."""

    @app.get("/api/v1/alarms", dependencies=[Depends(staff)], tags=["alarms"])
    def list_alarms(
        store: StoreDep, state: Annotated[str | None, Query(pattern="^(open|acknowledged|closed|active)$")] = None
    ) -> list[Alarm]:
        return [Alarm(**row) for row in store.alarms(state)]

    @app.post("/api/v1/alarms/{alarm_id}/acknowledge", tags=["alarms"])
    def acknowledge_alarm(alarm_id: str, body: StaffAction, actor: StaffActor) -> Alarm:
        def act(writer: IngestWriter, now_ms: int) -> None:
            with writer.transaction() as conn:
                writer.alarms.acknowledge(conn, alarm_id, actor, body.reason, now_ms)

        write(act)
        return _one_alarm(app, alarm_id)

    @app.post("/api/v1/alarms/{alarm_id}/close", tags=["alarms"])
    def close_alarm(alarm_id: str, body: StaffAction, actor: StaffActor) -> Alarm:
        def act(writer: IngestWriter, now_ms: int) -> None:
            with writer.transaction() as conn:
                writer.alarms.close_by_staff(conn, alarm_id, actor, body.reason, now_ms)

        write(act)
        return _one_alarm(app, alarm_id)

    @app.get("/api/v1/investigations/{claim_id}", dependencies=[Depends(staff)], tags=["alarms"])
    def get_investigation(claim_id: str, store: StoreDep) -> dict[str, object]:
        investigation = store.investigation(claim_id)
        if investigation is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no investigation for this claim")
        return investigation


def _add_order_routes(app: FastAPI, orders_scope: list[Any], write: Write) -> None:
    """Orders, buyer keys and lots for the shop platform (scope ``orders``)."""

    @app.post("/api/v1/orders", dependencies=orders_scope, tags=["orders"], status_code=status.HTTP_201_CREATED)
    def create_order(body: OrderIn, store: StoreDep) -> Order:
        def act(writer: IngestWriter, now_ms: int) -> bool:
            with writer.transaction() as conn:
                return orders.create_order(
                    conn,
                    order_id=body.order_id,
                    buyer_ref=body.buyer_ref,
                    product=body.product,
                    lot_id=body.lot_id,
                    items=body.items,
                    now_ms=now_ms,
                )

        if not write(act):
            existing = store.order(body.order_id)
            if existing is None or existing["buyer_ref"] != body.buyer_ref:
                raise HTTPException(status.HTTP_409_CONFLICT, "order id already used for another order")
        order = store.order(body.order_id)
        assert order is not None
        return Order(**order)

    @app.post("/api/v1/orders/{order_id}/cancel", dependencies=orders_scope, tags=["orders"])
    def cancel_order(order_id: str, store: StoreDep) -> Order:
        def act(writer: IngestWriter, now_ms: int) -> bool:
            with writer.transaction() as conn:
                cancelled = orders.cancel_order(conn, order_id)
                keys.revoke_all(conn, order_id, now_ms=now_ms)
                return cancelled

        write(act)
        order = store.order(order_id)
        if order is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such order")
        return Order(**order)

    @app.post("/api/v1/orders/{order_id}/keys", dependencies=orders_scope, tags=["orders"], status_code=201)
    def issue_key(order_id: str, request: Request, store: StoreDep) -> KeyOut:
        public: PublicService = request.app.state.public
        secret = public.key_secret
        if secret is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "buyer keys are not configured on this hub")
        order = store.order(order_id)
        if order is None or order["status"] != "active":
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such active order")
        ttl_s = public.settings.key_ttl_days * 86400

        def act(writer: IngestWriter, now_ms: int) -> tuple[str, int]:
            with writer.transaction() as conn:
                return keys.issue(conn, secret, order_id, ttl_s=ttl_s, now_ms=now_ms), now_ms

        key, now_ms = write(act)
        return KeyOut(url=f"{public.settings.base_url}/k/{key}", expires_ms=now_ms + int(ttl_s * 1000))

    @app.post("/api/v1/orders/{order_id}/keys/revoke", dependencies=orders_scope, tags=["orders"])
    def revoke_keys(order_id: str) -> dict[str, int]:
        def act(writer: IngestWriter, now_ms: int) -> int:
            with writer.transaction() as conn:
                return keys.revoke_all(conn, order_id, now_ms=now_ms)

        return {"revoked": write(act)}

    @app.post("/api/v1/lots", dependencies=orders_scope, tags=["orders"], status_code=status.HTTP_201_CREATED)
    def create_lot(body: LotIn) -> dict[str, object]:
        def act(writer: IngestWriter, now_ms: int) -> None:
            with writer.transaction() as conn:
                orders.upsert_lot(
                    conn, lot_id=body.lot_id, gtin=body.gtin, product=body.product, items=body.items, now_ms=now_ms
                )

        write(act)
        return {"lot_id": body.lot_id, "items": len(body.items)}

    @app.get("/api/v1/orders/{order_id}", dependencies=orders_scope, tags=["orders"])
    def get_order(order_id: str, store: StoreDep) -> Order:
        order = store.order(order_id)
        if order is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such order")
        return Order(**order)


def _add_epcis_routes(app: FastAPI) -> None:
    """The EPCIS event query (scope ``read``)."""

    @app.get("/api/v1/epcis/events", tags=["traceability"], dependencies=[Depends(request_reader)])
    def epcis_events(request: Request, query: Annotated[EpcisQuery, Depends()]) -> dict[str, object]:
        epc, lot = query.epc, query.lot
        public: PublicService = request.app.state.public
        with public.connection() as conn:
            if lot is not None:
                items = orders.lot_items(conn, lot)
            elif epc is not None:
                items = [epc]
            else:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, "give epc or lot")
            trail = build_trail(conn, f"lot:{lot}" if lot else f"item:{epc}", items, public.nodes)
        document = trail_document(trail, now_ms=int(time.time() * 1000))
        events = document["epcisBody"]["eventList"]
        document["epcisBody"]["eventList"] = query_events(
            events, epc=epc, lot=None, since_ms=query.since_ms, until_ms=query.until_ms, biz_step=query.biz_step
        )
        return cast(dict[str, object], document)


def _one_alarm(app: FastAPI, alarm_id: str) -> Alarm:
    store: ReadStore = app.state.store
    row = store.alarm(alarm_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such alarm")
    return Alarm(**row)
