"""The reference receiver: what a shop platform runs to take the hub's compensation claims.

It is the contract in code, used by the demo and by the dispatcher's tests over real HTTP:

- ``POST /claims`` checks ``X-Coldchain-Signature`` against the raw body (401 when missing or wrong,
  400 when malformed or outside the time tolerance, each with ``{"error": <reason>, "detail": ...}``);
- a claim whose ``X-Coldchain-Event-Id`` was already accepted answers 200 ``{"status": "duplicate"}``,
  so the sender stops retrying and the buyer is paid once;
- an accepted claim answers 200 ``{"status": "accepted"}`` and is kept in memory;
- ``GET /claims`` lists accepted claims (event id and body), oldest first.

The event id header is not covered by the signature, so a replay of a captured request with a new
event id would pass the id check; the receiver also remembers every signature it accepted within the
tolerance window (keyed on what it signs: the timestamp and the body) and treats a repeat as a duplicate.
This assumes two distinct claims never have byte-identical bodies in the same second (each carries its claim id).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from coldchain.config import MIN_SECRET_LENGTH, PLACEHOLDER_SECRETS
from coldchain.errors import ConfigError
from hub import webhooks

STARTUP_TIMEOUT_S: Final = 10.0
"""uvicorn binds in milliseconds; ten seconds means it failed."""

SHUTDOWN_TIMEOUT_S: Final = 10.0
"""Open keep-alive connections are closed at once on exit; this bounds a stuck request."""


class _ClaimBook:
    """Accepted claims and the signatures already seen, behind one lock (uvicorn may run handlers in threads)."""

    def __init__(self, tolerance_s: int) -> None:
        self._lock = threading.Lock()
        self._tolerance_s = tolerance_s
        self._claims: dict[str, Any] = {}
        self._seen_signatures: dict[str, int] = {}

    def add(self, event_id: str, signed: str, timestamp_s: int, now_s: int, body: Any) -> bool:
        """Keep a claim unless its event id or its signed content was seen; False for a duplicate."""
        with self._lock:
            # A signature older than the tolerance can no longer verify, so it need not be remembered.
            horizon = now_s - self._tolerance_s
            self._seen_signatures = {s: t for s, t in self._seen_signatures.items() if t >= horizon}
            if event_id in self._claims or signed in self._seen_signatures:
                return False
            self._seen_signatures[signed] = timestamp_s
            self._claims[event_id] = body
            return True

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"event_id": event_id, "body": body} for event_id, body in self._claims.items()]


class _RefusedError(Exception):
    """Why a claim is turned away: the HTTP status and a stable reason for the JSON answer."""

    def __init__(self, status_code: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.reason = reason
        self.detail = detail


def create_receiver_app(
    secrets: Sequence[bytes],
    *,
    tolerance_s: int = webhooks.DEFAULT_TOLERANCE_S,
    wall_clock: Callable[[], float] = time.time,
) -> FastAPI:
    """A FastAPI app taking signed claims under any of ``secrets`` (several during a rotation)."""
    if not secrets:
        raise ConfigError("the receiver needs at least one secret")
    keys = list(secrets)
    book = _ClaimBook(tolerance_s)
    app = FastAPI(title="coldchain reference claim receiver")

    def admit(request: Request, body: bytes, now_s: int) -> tuple[int, str, Any]:
        """The signed timestamp, the event id and the decoded claim, or a :class:`_RefusedError`."""
        header = request.headers.get(webhooks.SIGNATURE_HEADER)
        if header is None:
            raise _RefusedError(401, "missing_signature", f"{webhooks.SIGNATURE_HEADER} header is required")
        try:
            timestamp_s = webhooks.verify(keys, header, body, now_s=now_s, tolerance_s=tolerance_s)
        except webhooks.BadSignature as exc:
            raise _RefusedError(401, exc.reason, str(exc)) from None
        except webhooks.SignatureError as exc:
            raise _RefusedError(400, exc.reason, str(exc)) from None
        event_id = request.headers.get(webhooks.EVENT_ID_HEADER, "").strip()
        if not event_id:
            raise _RefusedError(400, "missing_event_id", f"{webhooks.EVENT_ID_HEADER} header is required")
        try:
            return timestamp_s, event_id, msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise _RefusedError(400, "malformed_body", f"body is not JSON: {exc}") from None

    @app.post("/claims")
    async def receive_claim(request: Request) -> JSONResponse:
        body = await request.body()  # the raw bytes: re-serialised JSON would not match the signature
        now_s = int(wall_clock())
        try:
            timestamp_s, event_id, claim = admit(request, body, now_s)
        except _RefusedError as refusal:
            return JSONResponse({"error": refusal.reason, "detail": refusal.detail}, status_code=refusal.status_code)
        signed = hashlib.sha256(f"{timestamp_s}.".encode() + body).hexdigest()
        if not book.add(event_id, signed, timestamp_s, now_s, claim):
            return JSONResponse({"status": "duplicate", "event_id": event_id})
        return JSONResponse({"status": "accepted", "event_id": event_id})

    @app.get("/claims")
    def list_claims() -> list[dict[str, Any]]:
        return book.listing()

    return app


class ReceiverServer:
    """uvicorn serving ``app`` on a thread; ``port=0`` picks a free port, read back from :attr:`url`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        # Binding here, before the thread starts, makes the real port known without racing uvicorn.
        self._socket = socket.create_server((host, port))
        self._host = host
        self._port: int = self._socket.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43117``."""
        return f"http://{self._host}:{self._port}"

    def start(self) -> ReceiverServer:
        """Serve on a daemon thread; returns once uvicorn accepts connections."""
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="claim-receiver", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"receiver on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(SHUTDOWN_TIMEOUT_S)
            self._thread = None
        self._socket.close()


def load_secrets(secret_file: Path) -> list[bytes]:
    """One secret per non-empty line (two lines during a rotation); placeholders and short ones refused."""
    try:
        lines = secret_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read receiver secrets from {secret_file}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"receiver secrets in {secret_file} are not UTF-8 text") from None
    secrets = [line.strip() for line in lines if line.strip()]
    if not secrets:
        raise ConfigError(f"{secret_file} holds no secret")
    for number, value in enumerate(secrets, start=1):
        # The values stay out of the messages: only their position is named.
        if value.lower() in PLACEHOLDER_SECRETS or len(value) < MIN_SECRET_LENGTH:
            raise ConfigError(f"secret {number} in {secret_file} is a placeholder or shorter than {MIN_SECRET_LENGTH}")
    return [value.encode() for value in secrets]


def run_receiver(port: int, secret_file: Path, *, host: str = "127.0.0.1") -> int:
    """Run the reference receiver in the foreground until SIGINT/SIGTERM (``coldchain receiver``)."""
    app = create_receiver_app(load_secrets(secret_file))
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
