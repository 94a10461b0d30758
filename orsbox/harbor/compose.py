"""A Harbor compose task's `environment/docker-compose.yaml`: its `main` service is the session's sandbox
(built from `environment/Dockerfile`), every other service a sidecar on the session's private network.

Only what orsbox can honour is accepted, and the rest is refused by name rather than ignored: a sidecar
has `build` (a folder inside environment/, optionally its `dockerfile`) or `image`, and may have
`command` and `environment`; `depends_on`, `healthcheck`, `ports`, `expose`, `container_name` and
`restart` are accepted and have no effect (sidecars start before the session's container; nothing is
published). `${VAR:-default}` reads as its default; a bare `${VAR}` is refused.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import HarborTaskError
from .taskconfig import read_small_file

COMPOSE_FILES = ("docker-compose.yaml", "docker-compose.yml")
MAX_COMPOSE_BYTES = 256 * 1024
MAX_SIDECARS = 4  # a session network is a /29: the gateway, the session's container, and these
IGNORED = {"depends_on", "healthcheck", "ports", "expose", "container_name", "restart"}
SIDECAR_KEYS = {"build", "image", "command", "environment"} | IGNORED
MAIN_KEYS = {"build", "image", "command", "environment", "working_dir"} | IGNORED
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


@dataclass(frozen=True)
class Service:
    """A sidecar: built from `context` (with `dockerfile` in it) or run from `image`."""

    name: str
    context: Path | None
    dockerfile: str
    image: str | None
    command: tuple[str, ...] | None
    env: tuple[tuple[str, str], ...]


def compose_file(environment: Path) -> Path | None:
    return next((environment / name for name in COMPOSE_FILES if (environment / name).is_file()), None)


def read_compose(path: Path) -> tuple[Service, ...]:
    """The sidecars of the compose file at `path`; HarborTaskError naming the file and the key if it has
    anything orsbox cannot run."""
    try:
        data = yaml.safe_load(read_small_file(path, MAX_COMPOSE_BYTES))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise HarborTaskError(f"{path}: not valid YAML: {str(exc)[:300]}") from None
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict) or not isinstance(services.get("main"), dict):
        raise HarborTaskError(f"{path}: services.main: a compose task needs a `main` service")
    _check_main(path, services["main"])
    others = [name for name in services if name != "main"]
    if len(others) > MAX_SIDECARS:
        raise HarborTaskError(f"{path}: services: at most {MAX_SIDECARS} services besides main")
    return tuple(_sidecar(path, str(name), services[name]) for name in others)


def _check_main(path: Path, main: dict[str, Any]) -> None:
    unknown = sorted(set(main) - MAIN_KEYS)
    if unknown:
        raise HarborTaskError(f"{path}: services.main.{unknown[0]}: not supported by orsbox")
    build = main.get("build", ".")
    context = build.get("context", ".") if isinstance(build, dict) else build
    dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
    if _text(path, "services.main.build", context).rstrip("/") not in (".", "") or dockerfile != "Dockerfile":
        raise HarborTaskError(f"{path}: services.main.build: orsbox builds main from environment/Dockerfile "
                              "(context \".\") only")


def _sidecar(path: Path, name: str, spec: Any) -> Service:
    where = f"services.{name}"
    if not _SERVICE.match(name):
        raise HarborTaskError(f"{path}: {where}: a service name must be a host name (a-z, 0-9, -; at most 31)")
    if not isinstance(spec, dict):
        raise HarborTaskError(f"{path}: {where}: not a mapping")
    unknown = sorted(set(spec) - SIDECAR_KEYS)
    if unknown:
        raise HarborTaskError(f"{path}: {where}.{unknown[0]}: not supported by orsbox")
    context, dockerfile, image = None, "Dockerfile", None
    if "build" in spec:
        build = spec["build"]
        folder = _text(path, f"{where}.build", build.get("context", ".") if isinstance(build, dict) else build)
        dockerfile = _text(path, f"{where}.build.dockerfile", build.get("dockerfile", "Dockerfile")
                           if isinstance(build, dict) else "Dockerfile")
        environment = path.parent.resolve()
        context = (environment / folder).resolve()
        if not context.is_relative_to(environment) or not (context / dockerfile).resolve().is_relative_to(context):
            raise HarborTaskError(f"{path}: {where}.build: must stay inside environment/")
        if not (context / dockerfile).is_file():
            raise HarborTaskError(f"{path}: {where}.build: {context / dockerfile} is missing")
    elif "image" in spec:
        image = _text(path, f"{where}.image", spec["image"])
    else:
        raise HarborTaskError(f"{path}: {where}: needs build or image")
    return Service(name, context, dockerfile, image, _command(path, where, spec.get("command")),
                   _environment(path, where, spec.get("environment")))


def _command(path: Path, where: str, command: Any) -> tuple[str, ...] | None:
    if command is None:
        return None
    if isinstance(command, str):
        return tuple(shlex.split(_text(path, f"{where}.command", command)))
    if isinstance(command, list):
        return tuple(_text(path, f"{where}.command", part) for part in command)
    raise HarborTaskError(f"{path}: {where}.command: a string or a list")


def _environment(path: Path, where: str, env: Any) -> tuple[tuple[str, str], ...]:
    if env is None:
        return ()
    if isinstance(env, list):
        pairs = [str(item).partition("=")[::2] for item in env]
    elif isinstance(env, dict):
        pairs = [(str(key), "" if value is None else str(value)) for key, value in env.items()]
    else:
        raise HarborTaskError(f"{path}: {where}.environment: a mapping or a list of NAME=value")
    return tuple((name, _text(path, f"{where}.environment.{name}", value)) for name, value in pairs)


def _text(path: Path, where: str, value: Any) -> str:
    """`value` as a string, `${VAR:-default}` as its default; a variable with no default is refused."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise HarborTaskError(f"{path}: {where}: expected a string")

    def default(match: re.Match[str]) -> str:
        if match.group(2) is None:
            raise HarborTaskError(f"{path}: {where}: ${{{match.group(1)}}} has no default, and orsbox sets no "
                                  "compose variables (write ${VAR:-value})")
        return match.group(2)

    return _VARIABLE.sub(default, str(value))
