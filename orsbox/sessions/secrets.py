"""Which secrets a session gets: the request's, the API key's and the operator's for its environment, in that
precedence; and of a client's, each one's `allowed_domains` against where the session can send it.

    X-Secrets of the /create request  >  the API key's own (`orsbox keys add --secret`)  >
    <secrets dir>/<environment>.toml (ops own it, mode 0600)  >  nothing

`resolve` merges them by name; the log says which name came from where (names only, never values),
and so does `orsbox policy explain`. The operator's files are read at start-up (a bad one stops the
server) and again when they change; a file that others may read or write is refused.

A secret restricted to domains may only go to a session that cannot send it anywhere else:
- network "none": it reaches nothing, so every secret is given;
- "allowlist": every listed host must be one of the secret's domains (`*.name` covers sub-domains);
- "full": it reaches anything, so only secrets without `allowed_domains` are given.
Otherwise `/create` is refused with a 400 naming the secret and the hosts in the way, except for the
entries whose value is the client's own API key (the official client adds `api_key` and
`OPENREWARD_API_KEY` to every session, allowed to reach the server's own host, which no session can
reach): those are withheld from sessions that have a network, and the log says so (names only).
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path

import structlog

from ..auth.keyfile import SECRET_NAME
from ..errors import BadSecrets, ConfigError, OrsboxError
from ..policy import SandboxPolicy
from ..policy.model import covers, parse_allow_entry
from ..protocol import Secret

log = structlog.get_logger()


def secrets_for_session(secrets: Mapping[str, Secret], policy: SandboxPolicy, *,
                        client_keys: Collection[str] = ()) -> dict[str, str]:
    """{name: value} of the secrets the session may get; `client_keys`: names whose value is the caller's key."""
    given: dict[str, str] = {}
    for name, secret in secrets.items():
        problem = leak_problem(secret, policy)
        if problem is None:
            given[name] = secret.value
        elif name in client_keys:
            log.info("secret_withheld", secret=name[:100], reason=problem[:300])
        else:
            domains = ", ".join(secret.allowed_domains or ()) or "no domain"
            raise BadSecrets(f"secret {name[:100]!r} may only be sent to {domains[:500]}, but {problem[:500]}")
    return given


def leak_problem(secret: Secret, policy: SandboxPolicy) -> str | None:
    """Where a session of `policy` could send `secret` that its allowed domains do not include; None: nowhere."""
    if secret.allowed_domains is None or policy.network == "none":
        return None
    if policy.network == "full":
        return 'sessions of this environment reach any address (network = "full")'
    outside = [host for host, _ in map(parse_allow_entry, policy.allow)
               if not any(covers(domain, host) for domain in secret.allowed_domains)]
    return f"sessions of this environment can also reach {', '.join(outside)}" if outside else None


SOURCES = ("request", "key", "environment")  # highest first


def resolve(request: Mapping[str, str], key: Mapping[str, str],
            environment: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The session's secrets by precedence (request > key > environment), and each name's source."""
    secrets: dict[str, str] = {}
    sources: dict[str, str] = {}
    for source, layer in zip(reversed(SOURCES), (environment, key, request), strict=True):
        secrets.update(layer)
        sources.update(dict.fromkeys(layer, source))
    return secrets, sources


class OperatorSecrets:
    """Per-environment secrets in `<folder>/<environment>.toml` (`NAME = "value"` lines): read when changed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[str, tuple[tuple[int, int, int, int], dict[str, str]]] = {}
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            self.of(path.stem)  # start-up: a bad file is a ConfigError now

    def of(self, environment: str) -> dict[str, str]:
        """The environment's operator secrets ({} without a file); a ConfigError if its file is unsafe or bad."""
        path = self.folder / f"{environment}.toml"
        try:
            info = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"operator secrets {path}: cannot be read ({exc.strerror})") from None
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)  # ctime: a chmod too
        cached = self._cache.get(environment)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        secrets = read_secrets_file(path)
        self._cache[environment] = (stamp, secrets)
        return secrets

    def names(self, environment: str) -> list[str] | str:
        """The names in the environment's file, or why it is refused (for `orsbox policy explain`)."""
        try:
            return sorted(self.of(environment))
        except ConfigError as exc:
            return str(exc.detail)


def read_secrets_file(path: Path) -> dict[str, str]:
    """A secrets file's {name: value}: a regular file (not a symlink) of this user or root, mode 0600 or stricter."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"operator secrets {path}: cannot be opened ({exc.strerror}; a symlink is refused)") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 or info.st_uid not in (0, os.geteuid()):
            raise ConfigError(f"operator secrets {path}: must be a regular file of this user or root that no one "
                              f"else may read or write (mode is {stat.filemode(info.st_mode)}); chmod 600 it")
        raw = file.read(1024 * 1024 + 1)
    if len(raw) > 1024 * 1024:
        raise ConfigError(f"operator secrets {path}: larger than 1 MiB")
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"operator secrets {path}: not TOML ({exc})") from None
    for name, value in data.items():
        if not SECRET_NAME.fullmatch(name) or not isinstance(value, str) or "\0" in value:
            raise ConfigError(f"operator secrets {path}: {name[:100]!r} must be a name (letters, digits, _) "
                              "with a string value")
    return dict(data)


def unavailable(environment: str, error: OrsboxError) -> OrsboxError:
    """What a client hears when its environment's operator secrets cannot be read (the log has the detail)."""
    log.error("operator_secrets_unreadable", env=environment, error=str(error.detail)[:500])
    return OrsboxError(f"the operator's secrets for environment {environment!r} cannot be read; "
                       "the server's log says why")
