"""The Docker backend: one hardened container per session, through docker-py.

docker-py blocks, so every engine call runs in one bounded executor sized to
the client's connection pool, with the caller's contextvars (log fields) copied
in. Engine errors become orsbox errors in `engine_errors`, and nowhere else.

Each session container gets a host folder, `<state dir>/sessions/<container name>/`,
mounted read-only at `/run/orsbox`: the server listens there and the agent dials in
(`session_folder`). Folders that no container of this node and no sandbox of this
process has are swept with the orphan networks (`remove_orphans`).
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import contextvars
import hashlib
import json
import os
import py_compile
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests
import structlog

from ... import agent as agent_package
from ...agent import wire
from ...agent.layout import (
    AGENT_MOUNT,
    ENV_CODE_DIR,
    ENV_SITE_PACKAGES,
    LABEL_AGENT,
    LABEL_CREATED,
    LABEL_ENTRYPOINT,
    LABEL_ENVIRONMENT,
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_OWNER,
    LABEL_POLICY_NAME,
    LABEL_ROLE,
    LABEL_SANDBOX,
    LABEL_SESSION,
    SOCKET_DIR,
)
from ...errors import ImageUnavailable, SandboxError
from ...metrics import Metrics
from ...policy import SandboxPolicy
from ..backend import (
    EnvironmentImage,
    FoundImage,
    Leftover,
    Sandbox,
    SandboxRef,
    SandboxSpec,
    SandboxStats,
    parse_describe_output,
)
from ..channel import open_channel
from ..network.networks import Firewall, SessionNetwork, SessionNetworks
from ..session_folder import AgentListener, folder_names, make_folder, remove_folder
from .settings import container_settings, runtime_problem, sidecar_settings

log = structlog.get_logger()
T = TypeVar("T")

DESCRIBE_TIMEOUT = 60.0  # s
#: Session containers' names, which their host folders share: a digest of the session id, then a random part.
CONTAINER_NAME = re.compile(r"orsbox-[0-9a-f]{12}-[0-9a-f]{6}")


def container_name(session_id: str) -> str:
    return f"orsbox-{hashlib.sha256(session_id.encode()).hexdigest()[:12]}-{secrets.token_hex(3)}"


@contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """The one place Docker and transport errors become orsbox errors."""
    try:
        yield
    except docker.errors.APIError as exc:
        raise SandboxError(f"{action}: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise SandboxError(f"{action}: {exc}") from exc


def stage_agent(state_dir: Path) -> Path:
    """Copy the agent package to `<state_dir>/agent/<hash>/orsbox/agent`, for a read-only mount.

    Only the agent goes into containers (its whole tree, without the host's __pycache__), beside an
    empty `orsbox/__init__.py`, so environments import `orsbox.agent` and nothing else of the server.
    It is byte-compiled afresh for this Python (unchecked-hash .pyc: the folder is named by the hash of
    its sources and never changes), which a container whose python3 is of the same version (the base's)
    loads instead of compiling every module at each start (~50 ms of the agent's start); others
    compile from source as before.
    """
    source = Path(agent_package.__file__).parent
    files = sorted(path.relative_to(source) for path in source.rglob("*") if path.is_file())
    files = [rel for rel in files if "__pycache__" not in rel.parts]
    hashed = hashlib.sha256(sys.implementation.cache_tag.encode())
    for rel in files:  # each file's path and content, unambiguously
        hashed.update(rel.as_posix().encode() + b"\0" + hashlib.sha256((source / rel).read_bytes()).digest())
    digest = hashed.hexdigest()[:16]
    root = state_dir / "agent" / digest
    if not (root / "orsbox" / "agent" / "__main__.py").exists():
        tmp = state_dir / "agent" / f".{digest}.{secrets.token_hex(4)}"
        (tmp / "orsbox" / "agent").mkdir(parents=True)
        (tmp / "orsbox" / "__init__.py").write_text("")
        for rel in files:
            target = tmp / "orsbox" / "agent" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, target)
        compileall.compile_dir(tmp, quiet=2, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.chmod(0o755)
        try:
            tmp.rename(root)
        except OSError:  # another process staged it first
            shutil.rmtree(tmp, ignore_errors=True)
    return root


class DockerBackend:
    """Sessions as Docker containers on the local engine."""

    def __init__(self, client: docker.DockerClient, *, state_dir: Path, node_id: str, pool_size: int,
                 runtimes: dict[str, list[str]] | None = None, mtu: str | None = None,
                 metrics: Metrics | None = None) -> None:
        self.client = client
        self.runtimes = runtimes if runtimes is not None else {"runc": []}  # name -> registered arguments
        self.state_dir = state_dir
        self.sessions_dir = state_dir / "sessions"
        self._folders_in_use: set[str] = set()  # session folders of sandboxes this process started or reattached
        self._sidecars: dict[str, list[str]] = {}  # session container name -> its sidecars' names
        self.node_id = node_id
        self.agent_dir = stage_agent(state_dir)
        self.agent_digest = self.agent_dir.name
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="docker")
        self.networks = SessionNetworks(self._run, client, node_id=node_id, mtu=mtu, metrics=metrics)

    @classmethod
    async def connect(cls, *, state_dir: Path, node_id: str, timeout: float, pool_size: int,
                      metrics: Metrics | None = None) -> DockerBackend:
        """Connect to the engine at DOCKER_HOST (default: the local socket); fail clearly if it does not answer."""
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        (state_dir / "sessions").mkdir(exist_ok=True, mode=0o700)

        def connect() -> tuple[docker.DockerClient, dict[str, list[str]], str | None]:
            client = docker.from_env(timeout=int(timeout), max_pool_size=pool_size)
            client.ping()
            return client, engine_runtimes(client), engine_mtu(client)

        try:
            client, runtimes, mtu = await asyncio.get_running_loop().run_in_executor(None, connect)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise SandboxError(f"the Docker engine does not answer at {_engine_address()}: {exc}") from exc
        log.info("docker_connected", runtimes=sorted(runtimes))
        return cls(client, state_dir=state_dir, node_id=node_id, pool_size=pool_size, runtimes=runtimes, mtu=mtu,
                   metrics=metrics)

    async def _run(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking engine call in the executor, keeping log context; map its errors."""
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        with engine_errors(action):
            return await loop.run_in_executor(self._executor, lambda: ctx.run(fn, *args, **kwargs))

    async def close(self) -> None:
        await self.networks.close()
        self._executor.shutdown(wait=True, cancel_futures=False)
        self.client.close()

    async def ping(self) -> bool:
        try:
            return bool(await self._run("ping", self.client.ping))
        except SandboxError:
            return False

    # -- environments --------------------------------------------------------

    async def list_environment_images(self) -> list[EnvironmentImage]:
        """Tagged images labelled as environments: one engine call (no per-image inspect that could race a removal)."""
        images = await self._run("list images", self.client.api.images, filters={"label": LABEL_ENVIRONMENT})
        found = []
        for image in images:
            labels = image.get("Labels") or {}
            tags = tuple(tag for tag in image.get("RepoTags") or () if tag != "<none>:<none>")
            if not labels.get(LABEL_ENTRYPOINT) or not tags:
                continue
            found.append(EnvironmentImage(
                name=labels[LABEL_ENVIRONMENT].lower(),
                image_id=image["Id"],
                entrypoint=labels[LABEL_ENTRYPOINT],
                policy_name=labels.get(LABEL_POLICY_NAME),
                tags=tags,
                created=str(image.get("Created", "")),
            ))
        return found

    async def describe(self, image: EnvironmentImage, policy: SandboxPolicy) -> dict[str, Any]:
        """Run the image's agent in describe mode in a locked-down, network-less container."""
        policy = policy.model_copy(update={"network": "none", "allow": ()})  # whatever the sessions get
        _require_runtime(policy, self.runtimes)
        command = self._agent_command("describe", image, policy)
        settings = self._settings(policy, labels=self._labels(role="describe", environment=image.name))
        settings["volumes"] = {str(self.agent_dir): {"bind": AGENT_MOUNT, "mode": "ro"}}
        container = await self._run(f"create describe container for {image.name}", self.client.containers.create,
                                    image.image_id, command, **settings)
        try:
            await self._run("start describe container", container.start)
            status = await self._run("wait for describe", _wait, container, DESCRIBE_TIMEOUT)
            out = await self._run("read describe output", container.logs, stdout=True, stderr=False)
            errors = await self._run("read describe errors", container.logs, stdout=False, stderr=True)
        finally:
            await self._remove_container(container.id)
        return parse_describe_output(image, status, out, errors)

    async def find_image(self, reference: str, *, pull: bool, timeout: float) -> FoundImage:
        """The image `reference`, pulled first (within `timeout` s) if the engine lacks it and `pull`."""
        try:
            attrs = await self._run("inspect image", self.client.api.inspect_image, reference)
        except SandboxError as exc:
            if not isinstance(exc.__cause__, docker.errors.ImageNotFound | docker.errors.NotFound):
                raise
            if not pull:
                raise ImageUnavailable(f"image {reference[:200]!r} is not on this engine, and pulling is off "
                                       "(ORSBOX_PULL_IMAGES)") from None
            attrs = await self._pull(reference, timeout)
        return FoundImage.from_config(str(attrs["Id"]), tuple(attrs.get("RepoTags") or (reference,)),
                                      attrs.get("Config") or {})

    async def _pull(self, reference: str, timeout: float) -> dict[str, Any]:
        repository, _, tag = reference.rpartition(":") if ":" in reference.rsplit("/", 1)[-1] else (
            reference, "", "latest")
        log.info("image_pull_started", image=reference[:200])

        def pull() -> None:
            for event in self.client.api.pull(repository, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise docker.errors.APIError(str(event["error"])[:500])
                if event.get("status") in ("Downloaded newer image", "Pull complete"):
                    log.info("image_pull_progress", image=reference[:200], status=event.get("status"))

        try:
            async with asyncio.timeout(timeout):
                await self._run(f"pull image {reference[:200]}", pull)
        except TimeoutError:
            raise ImageUnavailable(f"image {reference[:200]!r} is not on this engine and could not be pulled "
                                   f"within {timeout:.0f} s") from None
        except SandboxError as exc:
            raise ImageUnavailable(f"image {reference[:200]!r} is not on this engine and could not be pulled: "
                                   f"{exc.detail}") from None
        log.info("image_pulled", image=reference[:200])
        return dict(await self._run("inspect image", self.client.api.inspect_image, reference))

    # -- sessions ------------------------------------------------------------

    async def start(self, spec: SandboxSpec, *, timeout: float) -> Sandbox:
        """Create and start the session's container, and take its agent's dial-in within `timeout` s.

        The server listens in the session's folder before the container starts, so the agent's first dial
        gets through. Whatever fails (or is cancelled) on the way, the container, its network and its
        folder are removed.
        """
        _require_runtime(spec.policy, self.runtimes)
        name = container_name(spec.session_id)
        folder = make_folder(self.sessions_dir, name)
        self._folders_in_use.add(name)
        labels = self._labels(role="pool" if spec.pooled else "session", environment=spec.environment.name)
        labels.update({LABEL_SESSION: spec.session_id, LABEL_POLICY_NAME: spec.policy.digest(),
                       LABEL_OWNER: spec.owner})
        if spec.sandbox_request is not None:
            labels[LABEL_SANDBOX] = spec.sandbox_request
        command = self._agent_command("serve", spec.environment, spec.policy)
        ref = SandboxRef(id="", name=name)
        try:
            with AgentListener.open(folder) as listener:
                network = None
                if spec.policy.network != "none" or spec.sidecars:  # its own network, named like the container
                    network = await self.networks.create(name, spec.session_id, spec.policy, self._labels(
                        role="network", environment=spec.environment.name), mode="compose" if spec.sidecars else None)
                settings = self._settings(spec.policy, labels=labels, network=network)
                if spec.sidecars and network is not None:
                    settings.update(await self._start_sidecars(name, spec, network))
                    settings.pop("network_mode", None)
                settings["volumes"] = {
                    str(folder): {"bind": SOCKET_DIR, "mode": "ro"},  # the container cannot write host storage
                    str(self.agent_dir): {"bind": AGENT_MOUNT, "mode": "ro"},
                }
                container = await self._create_once(name, spec.environment.image_id, command, settings)
                ref = SandboxRef(id=container.id, name=name)
                await self._run("start container", container.start)
                log.info("container_started", container=name)
                return await self._connect(ref, listener, timeout, spec.policy)
        except BaseException:
            await self.remove(ref)
            raise

    async def _start_sidecars(self, name: str, spec: SandboxSpec, network: SessionNetwork) -> dict[str, Any]:
        """Start the session's sidecars on its network (`<container name>-<service>`, the policy's limits each);
        the session container's settings that reach them: the network, and their names in its /etc/hosts."""
        hosts: dict[str, str] = {}
        for sidecar in spec.sidecars:
            sidecar_name = f"{name}-{sidecar.service}"
            self._sidecars.setdefault(name, []).append(sidecar_name)
            labels = {**self._labels(role="sidecar", environment=spec.environment.name),
                      LABEL_SESSION: spec.session_id, LABEL_OWNER: spec.owner}
            container = await self._run(
                f"create sidecar {sidecar.service}", self.client.containers.create, sidecar.image_id,
                list(sidecar.command) if sidecar.command else None, name=sidecar_name, labels=labels,
                network=network.name, environment=dict(sidecar.env), hostname=sidecar.service,
                **sidecar_settings(spec.policy))
            await self._run(f"start sidecar {sidecar.service}", container.start)
            attrs = await self._run("inspect sidecar", self.client.api.inspect_container, container.id)
            address = ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).get(network.name, {})
            if not address.get("IPAddress"):
                raise SandboxError(f"sidecar {sidecar.service} has no address on the session's network")
            hosts[sidecar.service] = str(address["IPAddress"])
            log.info("sidecar_started", container=sidecar_name, service=sidecar.service)
        return {"network": network.name, "extra_hosts": hosts,
                "runtime": sidecar_settings(spec.policy)["runtime"]}

    async def reattach(self, leftover: Leftover, policy: SandboxPolicy, *, timeout: float) -> Sandbox:
        """Listen again in a left-over session container's folder for its agent (which redials whenever it
        has no connection), and restore its network (rules, proxy)."""
        name = leftover.ref.name
        if not CONTAINER_NAME.fullmatch(name):
            raise SandboxError(f"{name[:80]!r} is not named like a session container")
        self._folders_in_use.add(name)
        with AgentListener.open(self.sessions_dir / name) as listener:
            sandbox = await self._connect(leftover.ref, listener, timeout, policy)
        try:
            await self.networks.restore(name, policy)
        except BaseException:
            await sandbox.channel.close()
            raise
        return sandbox

    async def _connect(self, ref: SandboxRef, listener: AgentListener, timeout: float,
                       policy: SandboxPolicy) -> Sandbox:
        channel, hello = await open_channel(listener, timeout=timeout, is_alive=lambda: self._is_running(ref),
                                            max_frame=wire.frame_limit(policy.output_cap))
        return Sandbox(ref, channel, hello)

    async def _create_once(self, name: str, image: str, command: list[str], settings: dict[str, Any]) -> Any:
        """Create the container named `name`, retrying transient engine errors; exactly one ever exists.

        A retry after a create that reached the engine finds the container by name (a 409) and uses it.
        """
        for attempt, pause in enumerate(CREATE_RETRY_PAUSES):
            try:
                return await self._run("create container", self.client.containers.create,
                                       image, command, name=name, **settings)
            except SandboxError as exc:
                if not _transient(exc) and not _conflict(exc):
                    raise
                with contextlib.suppress(SandboxError):
                    return await self._run("find container", self.client.containers.get, name)
                if attempt == len(CREATE_RETRY_PAUSES) - 1:
                    raise
                log.warning("container_create_retried", container=name, error=exc.detail)
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _is_running(self, ref: SandboxRef) -> bool:
        try:
            attrs = await self._run("inspect container", self.client.api.inspect_container, ref.id or ref.name)
        except SandboxError:
            return False
        return bool(attrs.get("State", {}).get("Running"))

    async def remove(self, ref: SandboxRef) -> None:
        """Kill and remove the container (by name, in case create half-failed), its network (named like it)
        with its firewall rules and proxy, and its session folder."""
        await self._remove_container(ref.id or ref.name)
        for sidecar in self._sidecars.pop(ref.name, ()):  # before the network they are on
            await self._remove_container(sidecar)
        await self.networks.remove(ref.name)
        if CONTAINER_NAME.fullmatch(ref.name):
            remove_folder(self.sessions_dir, ref.name)
        self._folders_in_use.discard(ref.name)

    async def stats(self, ref: SandboxRef) -> SandboxStats:
        """The engine's one-shot stats of the container (its cgroup's counters, read now)."""
        raw = await self._run("container stats", self.client.api.stats, ref.id or ref.name, stream=False,
                              one_shot=True)
        return parse_stats(raw if isinstance(raw, dict) else {})

    async def logs(self, ref: SandboxRef, *, tail: int, max_bytes: int) -> bytes:
        """The container's last `tail` lines of output (stdout and stderr), at most the last `max_bytes`."""
        data = await self._run("container logs", self.client.api.logs, ref.id or ref.name, stdout=True,
                               stderr=True, tail=tail, timestamps=False)
        return bytes(data)[-max_bytes:]

    async def replace_allowlist(self, ref: SandboxRef, allow: tuple[str, ...]) -> None:
        await self.networks.replace_allowlist(ref.name, allow)  # the network is named like its container

    def network_problem(self) -> str | None:
        """Why sessions cannot get networks of their own here (no iptables, not root), or None."""
        return Firewall.problem()

    async def remove_orphans(self, live_sessions: set[str]) -> None:
        """Remove this node's session networks (and rules) that no live session or left container has,
        and the session folders that no container of this node and no sandbox of this process has."""
        containers = {leftover.ref.name for leftover in await self.list_leftovers()}
        await self.networks.remove_orphans(live_sessions, containers)
        keep = containers | self._folders_in_use  # read with the folders below, with no await between
        for name in folder_names(self.sessions_dir):
            if CONTAINER_NAME.fullmatch(name) and name not in keep:
                log.warning("orphan_folder_removed", folder=name)
                remove_folder(self.sessions_dir, name)

    async def _remove_container(self, container_id: str) -> None:
        try:
            await self._run("remove container", self.client.api.remove_container, container_id, force=True, v=True)
        except SandboxError as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound):
                log.warning("container_remove_failed", container=container_id, error=str(exc))

    async def list_leftovers(self) -> list[Leftover]:
        """This node's containers (`orsbox.managed=1`), their labels read as untrusted strings."""
        containers = await self._run("list containers", self.client.api.containers, all=True,
                                     filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_NODE}={self.node_id}"]})
        return [_leftover(container) for container in containers]

    # -- helpers -------------------------------------------------------------

    def _labels(self, *, role: str, environment: str) -> dict[str, str]:
        return {
            LABEL_MANAGED: "1",
            LABEL_ROLE: role,
            LABEL_ENVIRONMENT: environment,
            LABEL_NODE: self.node_id,
            LABEL_CREATED: str(int(time.time())),
            LABEL_AGENT: str(wire.PROTOCOL_VERSION),
        }

    @staticmethod
    def _settings(policy: SandboxPolicy, *, labels: dict[str, str],
                  network: SessionNetwork | None = None) -> dict[str, Any]:
        settings = container_settings(policy, network.name) if network else container_settings(policy)
        settings.update(
            labels=labels,
            working_dir="/",
            environment={
                **(network.container_environment() if network else {}),  # the egress proxy (allowlist)
                # The agent, the environment's code, then the wheels `orsbox build` vendored for it.
                "PYTHONPATH": f"{AGENT_MOUNT}:{ENV_CODE_DIR}:{ENV_SITE_PACKAGES}",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONUNBUFFERED": "1",
            },
            entrypoint=[],
        )
        return settings

    @staticmethod
    def _agent_command(mode: str, image: EnvironmentImage, policy: SandboxPolicy) -> list[str]:
        limits = json.dumps(policy.agent_limits(), separators=(",", ":"))
        return ["python3", "-B", "-m", "orsbox.agent", mode, "--entrypoint", image.entrypoint, "--limits", limits]


def _require_runtime(policy: SandboxPolicy, runtimes: dict[str, list[str]]) -> None:
    problem = runtime_problem(policy, runtimes)
    if problem:
        raise SandboxError(problem)


def engine_mtu(client: docker.DockerClient) -> str | None:
    """The MTU the engine gives its default bridge (daemon.json "mtu"), for session networks to use too."""
    try:
        options = client.api.inspect_network("bridge").get("Options") or {}
    except docker.errors.DockerException:
        return None
    return options.get("com.docker.network.driver.mtu")


def engine_runtimes(client: docker.DockerClient) -> dict[str, list[str]]:
    """The OCI runtimes the engine has (`docker info`), each with the arguments it was registered with."""
    runtimes = client.info().get("Runtimes") or {}
    return {name: list((spec or {}).get("runtimeArgs") or []) for name, spec in runtimes.items()}


@dataclass(frozen=True)
class EngineFacts:
    """What `orsbox policy` reads from the engine."""

    runtimes: dict[str, list[str]]
    image: str | None  # the environment's newest image (first tag), if any
    policy_label: str | None  # that image's orsbox.policy label


def engine_facts(environment: str | None = None, *, timeout: float = 10.0) -> EngineFacts:
    """The engine's runtimes and `environment`'s image label (blocking; for the CLI).

    Raises SandboxError when the engine does not answer.
    """
    with engine_errors(f"ask the Docker engine at {_engine_address()}"):
        client = docker.from_env(timeout=int(timeout))
        try:
            runtimes = engine_runtimes(client)
            image = _newest_image(client, environment) if environment else None
        finally:
            client.close()
    if image is None:
        return EngineFacts(runtimes, None, None)
    return EngineFacts(runtimes, (image.tags or [image.short_id])[0], (image.labels or {}).get(LABEL_POLICY_NAME))


def _newest_image(client: docker.DockerClient, environment: str) -> Any:
    """The image the catalog would serve `environment` from (newest by creation time), or None."""
    images = [image for image in client.images.list(filters={"label": LABEL_ENVIRONMENT})
              if (image.labels or {}).get(LABEL_ENVIRONMENT, "").lower() == environment.lower()
              and (image.labels or {}).get(LABEL_ENTRYPOINT) and image.tags]
    return max(images, key=lambda image: image.attrs.get("Created", ""), default=None)


def _engine_address() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


CREATE_RETRY_PAUSES = (0.2, 0.5, 1.0)  # s between attempts at creating a container


def _transient(exc: SandboxError) -> bool:
    """An engine error worth retrying: the engine was unreachable or answered 5xx."""
    cause = exc.__cause__
    if isinstance(cause, docker.errors.APIError):
        return cause.status_code is not None and cause.status_code >= 500
    return isinstance(cause, (requests.ConnectionError, requests.Timeout))


def _conflict(exc: SandboxError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, docker.errors.APIError) and cause.status_code == 409


def _leftover(container: dict[str, Any]) -> Leftover:
    labels = container.get("Labels") or {}
    names = container.get("Names") or ["/"]

    def label(name: str, limit: int = 256) -> str | None:
        value = labels.get(name)
        return value[:limit] if isinstance(value, str) and value else None

    try:
        created = float(label(LABEL_CREATED, 32) or 0)
    except ValueError:
        created = 0.0
    status = str(container.get("State", ""))[:32]
    return Leftover(ref=SandboxRef(id=str(container["Id"]), name=str(names[0]).lstrip("/")),
                    role=label(LABEL_ROLE, 32) or "", session_id=label(LABEL_SESSION),
                    environment=label(LABEL_ENVIRONMENT),
                    owner=label(LABEL_OWNER, 64), created=created, running=status == "running", status=status,
                    policy_digest=label(LABEL_POLICY_NAME, 64), image_id=str(container.get("ImageID", ""))[:80] or None,
                    sandbox_request=label(LABEL_SANDBOX, 16 * 1024))


def parse_stats(raw: dict[str, Any]) -> SandboxStats:
    """The figures of an engine's stats answer (cgroup v1 or v2), each None if missing or not a number."""
    def number(*path: str) -> int | None:
        value: Any = raw
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value if type(value) is int and value >= 0 else None

    cpu = number("cpu_stats", "cpu_usage", "total_usage")
    return SandboxStats(cpu_seconds=cpu / 1e9 if cpu is not None else None,
                        memory_bytes=number("memory_stats", "usage"), memory_limit=number("memory_stats", "limit"),
                        memory_peak=number("memory_stats", "max_usage"), pids=number("pids_stats", "current"),
                        pids_limit=number("pids_stats", "limit"))


def _wait(container: Any, timeout: float) -> int:
    try:
        return int(container.wait(timeout=timeout)["StatusCode"])
    except requests.exceptions.ReadTimeout:
        raise SandboxError(f"describe did not finish within {timeout:.0f} s") from None
