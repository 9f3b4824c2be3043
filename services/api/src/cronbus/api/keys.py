"""API keys made through the API: kept in the KV bucket `<p>_keys`, watched by every replica.

Each key is one bucket entry (the key's id -> `ApiKey`, holding the secret's sha256, never the
secret). Every API process watches the whole bucket into memory, so a key created or revoked on
one replica is known to all of them as soon as NATS delivers the change (milliseconds), and
checking a key costs no round trip. A revocation is an update of the entry (`revoked_at`), not
a delete, so the key can still be listed and its use explained.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime

import msgspec
from litestar.exceptions import NotFoundException
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from cronbus.api.audit import KEY_CREATED, KEY_REVOKED, AuditLog, parse_time
from cronbus.api.domain import Cursor, FieldError, InvalidInput, Principal, Role, check_id
from cronbus.api.validation import MAX_NAME, check_text
from cronbus.shared.bus import Bus

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

SECRET_PREFIX = "cb_"
# How long start() waits for the bucket's current keys before the API serves.
_LOAD_TIMEOUT = 10.0
_RESTART_FIRST = 0.1
_RESTART_MAX = 5.0
_UPDATE_ATTEMPTS = 5


class ApiKey(msgspec.Struct, kw_only=True):
    """A key as the bucket stores it."""

    id: str
    name: str
    role: str
    key_hash: str
    created_at: datetime
    created_by: str = ""
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str = ""


class KeyIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/keys`: `expires_at` is an ISO-8601 time with an offset, in the future."""

    name: str
    role: str
    expires_at: str | None = None


class KeyOut(msgspec.Struct, kw_only=True):
    """A key without its secret."""

    id: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    created_by: str


class KeyCreated(msgspec.Struct, kw_only=True):
    """The answer to a create: the only time `key` (the secret) is shown."""

    id: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    key: str


class KeyPage(msgspec.Struct, kw_only=True):
    items: list[KeyOut]
    next: str | None = msgspec.field(default=None)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ApiKey)


def key_hash(key: str) -> str:
    """How a key is stored (in the bucket, and in the `api_keys` table): sha256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def _view(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        name=key.name,
        role=key.role,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        created_by=key.created_by,
    )


def checked_key(data: KeyIn, now: datetime) -> tuple[str, Role, datetime | None]:
    """The name, role and expiry of a create request, or InvalidInput naming each bad field."""
    errors: list[FieldError] = []
    name = data.name.strip()
    if not name:
        errors.append(FieldError(field="name", reason="must not be empty"))
    else:
        check_text(errors, "name", name, max_chars=MAX_NAME)
    role = Role.named(data.role)
    if role is None:
        roles = ", ".join(r.name for r in Role)
        errors.append(FieldError(field="role", reason=f"{data.role!r} is not a role; use one of {roles}"))
    expires_at = None
    if data.expires_at is not None:
        try:
            expires_at = parse_time("expires_at", data.expires_at)
        except InvalidInput as exc:
            errors.extend(exc.errors)
        else:
            if expires_at <= now:
                errors.append(
                    FieldError(field="expires_at", reason=f"{data.expires_at} is not in the future")
                )
    if errors:
        raise InvalidInput(errors)
    assert role is not None
    return name, role, expires_at


class KeyStore:
    """The bucket's keys, mirrored in memory by a watcher this object owns (`start`/`stop`)."""

    def __init__(self, bus: Bus, audit: AuditLog, clock: Clock) -> None:
        self.bus = bus
        self.audit = audit
        self.clock = clock
        self._by_id: dict[str, ApiKey] = {}
        self._by_hash: dict[str, ApiKey] = {}
        self._revisions: dict[str, int] = {}
        self._kv: KeyValue | None = None
        self._follower: asyncio.Task[None] | None = None

    # --- the mirror ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the bucket's keys (bounded), then follow its changes in the background."""
        kv = await self._bucket()
        watcher = await kv.watchall()
        try:
            await asyncio.wait_for(self._until_loaded(watcher), timeout=_LOAD_TIMEOUT)
        except BaseException:
            await watcher.stop()
            raise
        self._follower = asyncio.create_task(self._follow(watcher), name="api-keys-watch")

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.bus.js.key_value(self.bus.settings.names.keys_bucket)
        return self._kv

    async def _until_loaded(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the watcher's "all current values delivered" marker
                return
            self._apply(entry)

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        """Apply every change; when the watch ends (it should not), watch again: a new watch
        delivers every key's latest value, so nothing missed meanwhile is lost."""
        failures = 0
        while True:
            try:
                async for entry in watcher:
                    if entry is not None:
                        self._apply(entry)
                    failures = 0
                log.warning("api keys: the bucket watch ended; watching again")
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await watcher.stop()
                raise
            except Exception as exc:
                log.warning("api keys: the bucket watch failed (%s); watching again", exc)
            with contextlib.suppress(Exception):
                await watcher.stop()
            failures += 1
            await asyncio.sleep(min(_RESTART_MAX, _RESTART_FIRST * 2**failures))
            try:
                watcher = await (await self._bucket()).watchall()
            except Exception as exc:
                log.warning("api keys: cannot watch the bucket (%s); trying again", exc)

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.revision is not None and entry.revision < self._revisions.get(entry.key, 0):
            return  # older than what this replica already applied (its own write came first)
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self._forget(entry.key)
            return
        try:
            key = _decoder.decode(entry.value)
        except msgspec.DecodeError as exc:
            log.warning("api keys: unreadable entry %s (revision %s): %s", entry.key, entry.revision, exc)
            return
        self._remember(key, entry.revision or 0)

    def _remember(self, key: ApiKey, revision: int) -> None:
        if revision < self._revisions.get(key.id, 0):
            return
        self._forget(key.id)
        self._by_id[key.id] = key
        self._by_hash[key.key_hash] = key
        self._revisions[key.id] = revision

    def _forget(self, key_id: str) -> None:
        old = self._by_id.pop(key_id, None)
        if old is not None:
            self._by_hash.pop(old.key_hash, None)

    def find(self, key_hash: str) -> ApiKey | None:
        """The key with this sha256 hex digest, revoked and expired ones included."""
        return self._by_hash.get(key_hash)

    # --- the endpoints -------------------------------------------------------------------------

    def list(self, *, cursor: str | None, limit: int) -> KeyPage:
        """Every key in the bucket, oldest first, revoked ones included."""
        after = Cursor.decode(cursor) if cursor else None
        ordered = sorted(self._by_id.values(), key=lambda k: (k.created_at, k.id))
        if after is not None:
            ordered = [k for k in ordered if (k.created_at, k.id) > (after.at, after.id)]
        page = ordered[:limit]
        next_cursor = (
            Cursor(at=page[-1].created_at, id=page[-1].id).encode() if len(ordered) > limit else None
        )
        return KeyPage(items=[_view(k) for k in page], next=next_cursor)

    async def create(self, data: KeyIn, by: Principal) -> KeyCreated:
        """A new key; its secret is in the answer and nowhere else."""
        now = self.clock()
        name, role, expires_at = checked_key(data, now)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=str(uuid.uuid4()),
            name=name,
            role=role.name,
            key_hash=key_hash(secret),
            created_at=now,
            created_by=by.name,
            expires_at=expires_at,
        )
        kv = await self._bucket()
        revision = await kv.create(key.id, _encoder.encode(key))
        self._remember(key, revision)
        detail = {"key_id": key.id, "name": key.name, "role": key.role}
        if expires_at is not None:
            detail["expires_at"] = expires_at.isoformat()
        await self.audit.record(KEY_CREATED, by.name, detail=detail, msg_id=f"{KEY_CREATED}:{key.id}", at=now)
        return KeyCreated(
            id=key.id, name=key.name, role=key.role, created_at=now, expires_at=expires_at, key=secret
        )

    async def revoke(self, key_id: str, by: Principal) -> None:
        """Revoke the key (again is fine: it stays revoked as it was); 404 when unknown."""
        key_id = check_id("key", key_id)
        kv = await self._bucket()
        for _ in range(_UPDATE_ATTEMPTS):
            try:
                entry = await kv.get(key_id)
            except KeyNotFoundError:
                raise NotFoundException(
                    f"no API key with id {key_id!r}; list keys with GET /v1/keys"
                ) from None
            assert entry.value is not None and entry.revision is not None
            key = _decoder.decode(entry.value)
            if key.revoked_at is not None:
                self._remember(key, entry.revision)
                return
            now = self.clock()
            revoked = msgspec.structs.replace(key, revoked_at=now, revoked_by=by.name)
            try:
                revision = await kv.update(key_id, _encoder.encode(revoked), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue  # changed meanwhile (revoked on another replica?): read it again
            self._remember(revoked, revision)
            await self.audit.record(
                KEY_REVOKED,
                by.name,
                detail={"key_id": key.id, "name": key.name, "role": key.role},
                msg_id=f"{KEY_REVOKED}:{key.id}",
                at=now,
            )
            return
        raise RuntimeError(f"API key {key_id} kept changing while it was being revoked")
