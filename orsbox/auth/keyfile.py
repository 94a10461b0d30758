"""The keys file: API keys as salted SHA-256 digests, managed with `orsbox keys add|list|revoke`.

A key reads `osk_<id>_<secret>`: the id finds its record without trying every one, and only the
secret's digest is stored. Keys are 256-bit random, so one salted SHA-256 is as good as a slow
hash here and costs a microsecond per request. The file is JSON, written atomically under a lock,
mode 0600; a file that others may write is refused (whoever can write it can mint keys).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets as _random
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

KEY_PREFIX = "osk_"
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
FILE_VERSION = 1


class KeyRecord(BaseModel):
    """One key as stored: never the key itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[0-9a-f]{8}$")
    name: str = Field("", max_length=200)
    created: float
    salt: str = Field(pattern=r"^[0-9a-f]{32}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    max_sessions: int | None = Field(None, ge=1, description="live sessions at most; None: the server's default")
    starts_per_minute: int | None = Field(None, ge=1, description="creates per minute; None: the server's default")
    role: Literal["client", "admin"] = Field("client", description="admin: an operator key (the admin API, "
                                                                  "/metrics), never a client's")
    secrets: dict[str, str] = Field({}, max_length=64, description="secrets its sessions get, under a request's "
                                                                  "X-Secrets and over the environment's")

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, secrets: dict[str, str]) -> dict[str, str]:
        for name, value in secrets.items():
            if not SECRET_NAME.fullmatch(name) or "\0" in value or len(value) > 65536:
                raise ValueError(f"secret {name[:100]!r}: names are letters, digits and _ (not first a digit), "
                                 "values at most 64 KiB without NUL")
        return secrets

    def matches(self, secret: str) -> bool:
        """Constant-time comparison of `secret`'s salted digest with the stored one."""
        return hmac.compare_digest(digest(self.salt, secret), self.sha256)


class _Stored(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = FILE_VERSION
    keys: list[KeyRecord] = []


def digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of a key in orsbox's format, or None."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, _, secret = key[len(KEY_PREFIX):].partition("_")
    return (key_id, secret) if len(key_id) == 8 and secret else None


def new_key(name: str = "", *, max_sessions: int | None = None, starts_per_minute: int | None = None,
            admin: bool = False, secrets: dict[str, str] | None = None) -> tuple[KeyRecord, str]:
    """A fresh key: its record (to store) and the key itself (to show once)."""
    key_id, secret, salt = _random.token_hex(4), _random.token_urlsafe(32), _random.token_hex(16)
    record = KeyRecord(id=key_id, name=name, created=time.time(), salt=salt, sha256=digest(salt, secret),
                       max_sessions=max_sessions, starts_per_minute=starts_per_minute,
                       role="admin" if admin else "client", secrets=secrets or {})
    return record, f"{KEY_PREFIX}{key_id}_{secret}"


class KeyFile:
    """The keys file at `path` (it need not exist yet: no keys)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[KeyRecord]:
        """The stored keys; a malformed or unsafe file is a ConfigError naming it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(f"keys file {self.path}: cannot be opened ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode) or mode & 0o022:
                raise ConfigError(f"keys file {self.path}: must be a regular file only its owner may write "
                                  f"(mode is {stat.filemode(mode)}); chmod 600 it")
            raw = file.read()
        try:
            return _Stored.model_validate_json(raw).keys if raw.strip() else []
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the file"
            raise ConfigError(f"keys file {self.path}: {where}: {first['msg']}") from None

    def stamp(self) -> tuple[int, int, int] | None:
        """(inode, size, mtime ns) of the file, to notice changes cheaply; None if it does not exist."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns

    def add(self, record: KeyRecord) -> None:
        with self._locked() as keys:
            keys.append(record)

    def revoke(self, key_id: str) -> bool:
        """Remove the key `key_id`; False if there is none."""
        with self._locked() as keys:
            kept = [record for record in keys if record.id != key_id]
            found = len(kept) != len(keys)
            keys[:] = kept
        return found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[KeyRecord]]:
        """The keys, to change in place; written back atomically (0600) under an exclusive lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            keys = self.load()
            yield keys
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            data = _Stored(keys=keys).model_dump_json(indent=2).encode() + b"\n"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
        finally:
            os.close(lock_fd)


def describe(record: KeyRecord) -> dict[str, object]:
    """What `orsbox keys list` shows of a key: never its digest or salt."""
    return {"id": record.id, "name": record.name,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created)),
            "max_sessions": record.max_sessions, "starts_per_minute": record.starts_per_minute, "role": record.role,
            "secrets": sorted(record.secrets)}
