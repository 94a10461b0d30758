"""The keys a server accepts, and what a presented key makes of a request: a `Principal`.

Keys come from `ORSBOX_API_KEYS` (kept in memory only as salted digests) and the keys file
(re-read when it changes, so `orsbox keys revoke` takes effect on a running server within a
second). With neither, the server makes one at first start and keeps it 0600 in the state dir.
Without authentication (`--no-auth`, loopback only), every request is served and `X-API-Key`
still separates clients' sessions.

Operator keys (`ORSBOX_ADMIN_KEYS`, or `orsbox keys add --admin`) make an admin `Principal`: only they
may use the admin API and `/metrics` while authentication is on. Without authentication, every
request is an admin's (the server is on loopback only).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ..errors import ConfigError, Unauthorized
from .keyfile import KeyFile, KeyRecord, digest, new_key, split_key

log = structlog.get_logger()

OPEN_KEY_ID = "open"  # the key id of requests to a server without authentication
RELOAD_INTERVAL = 1.0  # s between checks of the keys file for changes
SECRET_FILE = "server.secret"  # the HMAC key of session owners, made once per state dir
GENERATED_KEY_FILE = "api_key"  # the key made at first start when none is configured


@dataclass(frozen=True)
class Quota:
    """A key's limits; None: no limit of its own (the server's and the policies' still apply)."""

    max_sessions: int | None = None
    starts_per_minute: int | None = None


@dataclass(frozen=True)
class Principal:
    """Who a request is from: the key's id (for logs), its quota, and the owner of the sessions it opens."""

    key_id: str
    owner: str
    quota: Quota
    # A session's environment creating sandboxes: the key its session counts against, and the session.
    on_behalf_of: Principal | None = None
    parent_session: str | None = None
    admin: bool = False  # an operator key: the admin API and /metrics
    secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # the key's own (keys file): (name, value)


@dataclass(frozen=True)
class _EnvKey:
    salt: str
    sha256: str
    identity: str


class KeyRing:
    def __init__(self, *, env_keys: Sequence[str], key_file: KeyFile, secret: bytes, required: bool,
                 default_quota: Quota, admin_keys: Sequence[str] = ()) -> None:
        self.required = required
        self.key_file = key_file
        self.default_quota = default_quota
        self._secret = secret
        self._env_keys = [_env_key(key) for key in env_keys]
        self._admin_keys = [_env_key(key, "admin") for key in admin_keys]
        self._file_keys: dict[str, KeyRecord] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._reload(force=True)

    @classmethod
    def open(cls, *, state_dir: Path, env_keys: Sequence[str], key_file: Path, required: bool,
             default_quota: Quota, admin_keys: Sequence[str] = ()) -> tuple[KeyRing, Path | None]:
        """The server's key ring, and the file of the key it made if none was configured (else None)."""
        generated = None
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        keys = KeyFile(key_file)
        if required and not env_keys and not any(record.role == "client" for record in keys.load()):
            generated = generate_key(state_dir, keys)
        ring = cls(env_keys=env_keys, key_file=keys, secret=server_secret(state_dir), required=required,
                   default_quota=default_quota, admin_keys=admin_keys)
        return ring, generated

    def authenticate(self, presented: str | None) -> Principal:
        """The principal of a request that sent `presented` as X-API-Key; 401 if it may not."""
        if not self.required:
            return Principal(OPEN_KEY_ID, self._owner(f"open:{presented or ''}"), self.default_quota, admin=True)
        if not presented:
            raise Unauthorized("this server needs an API key: send it in the X-API-Key header")
        self._reload()
        parts = split_key(presented)
        if parts is not None:
            record = self._file_keys.get(parts[0])
            if record is not None and record.matches(parts[1]):
                quota = Quota(record.max_sessions or self.default_quota.max_sessions,
                              record.starts_per_minute or self.default_quota.starts_per_minute)
                return Principal(record.id, self._owner(f"key:{record.id}"), quota, admin=record.role == "admin",
                                 secrets=tuple(sorted(record.secrets.items())))
        for prefix, keys, admin in (("env", self._env_keys, False), ("admin", self._admin_keys, True)):
            matched = _match(keys, presented)
            if matched is not None:
                return Principal(f"{prefix}-{matched + 1}", self._owner(keys[matched].identity), self.default_quota,
                                 admin=admin)
        raise Unauthorized("invalid API key")

    def _owner(self, identity: str) -> str:
        return hmac.new(self._secret, identity.encode(), hashlib.sha256).hexdigest()[:32]

    def _reload(self, *, force: bool = False) -> None:
        """Re-read the keys file if it changed (checked at most every RELOAD_INTERVAL s)."""
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_INTERVAL:
            return
        self._checked = now
        stamp = self.key_file.stamp()
        if not force and stamp == self._stamp:
            return
        try:
            records = self.key_file.load()
        except ConfigError as exc:
            if force:
                raise
            log.error("keys_file_unreadable", error=exc.detail, kept=len(self._file_keys))
            return
        self._stamp = stamp
        self._file_keys = {record.id: record for record in records}
        if not force:
            log.info("keys_file_reloaded", keys=len(records))


def _env_key(key: str, kind: str = "env") -> _EnvKey:
    salt = secrets.token_hex(16)
    return _EnvKey(salt, digest(salt, key), f"{kind}:" + hashlib.sha256(key.encode()).hexdigest())


def _match(keys: Sequence[_EnvKey], presented: str) -> int | None:
    """The index of the key `presented` is, or None; every one compared, so no timing tells which."""
    matched = None
    for index, key in enumerate(keys):
        if hmac.compare_digest(digest(key.salt, presented), key.sha256):
            matched = index
    return matched


def server_secret(state_dir: Path) -> bytes:
    """The state dir's HMAC secret for session owners, made on first use (0600); stable across restarts."""
    path = state_dir / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)) as file:
            return bytes.fromhex(file.read().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a server secret ({exc}); remove it to make a new one "
                          "(sessions left running will no longer be adopted by their owners)") from None


def generate_key(state_dir: Path, keys: KeyFile) -> Path:
    """Make a key, store its digest in the keys file, and the key itself in `<state_dir>/api_key` (0600)."""
    record, key = new_key("generated at first start")
    path = state_dir / GENERATED_KEY_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    os.replace(tmp, path)
    keys.add(record)
    return path
