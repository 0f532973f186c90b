"""The hub's HTTP API (FastAPI): thin routes over the read store and the ingest counters."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

import coldchain
from coldchain.topics import GATEWAY_ID_CHARS
from hub.config import ApiToken
from hub.store import ReadStore


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


UNITS = {"temperature": "°C", "humidity": "%RH"}


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class TokenChecker:
    """Accepts a bearer token whose SHA-256 matches a configured token holding ``scope``."""

    def __init__(self, tokens: Sequence[ApiToken], scope: str) -> None:
        self._hashes = [bytes.fromhex(t.sha256) for t in tokens if scope in t.scopes]

    def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]
    ) -> None:
        if credentials is not None:
            digest = hashlib.sha256(credentials.credentials.encode()).digest()
            # Compare against every hash so timing does not tell which one matched.
            matches = [hmac.compare_digest(digest, known) for known in self._hashes]
            if any(matches):
                return
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )


def get_store(request: Request) -> ReadStore:
    """The read store the app was built with."""
    store: ReadStore = request.app.state.store
    return store


StoreDep = Annotated[ReadStore, Depends(get_store)]


def create_app(
    store: ReadStore,
    tokens: Sequence[ApiToken],
    *,
    mqtt_connected: Callable[[], bool],
    ingest_counters: Callable[[], dict[str, int]],
) -> FastAPI:
    """Build the API; every ``/api/v1`` route needs a bearer token with the ``read`` scope."""
    app = FastAPI(title="coldchain hub", version=coldchain.__version__)
    app.state.store = store
    read_scope = [Depends(TokenChecker(tokens, "read"))]

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

    return app
