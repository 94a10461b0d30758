"""Session networks: a Docker network of its own per `allowlist` or `full` session, its firewall rules, its proxy.

- `allowlist`: an *internal* bridge network (Docker forwards nothing in or out of it). The host, its
  gateway, answers on one port only: the session's egress proxy (`egress.py`), which runs in this
  process and lets through the policy's `allow` entries alone. The container's DNS server is its own
  loopback, so no name resolves inside it (Docker's embedded DNS would otherwise forward names out).
- `compose`: a Harbor compose task's network: internal like `allowlist` but with no proxy and with
  traffic between its containers (the session's and its sidecars) on; the host answers nothing.
- `full`: a bridge network with NAT out, inter-container traffic off. The host's own addresses (every
  packet from the network to the host), link-local addresses (the metadata address), orsbox's other
  session networks and the host's published ports (DNAT) are dropped.

Each network is named like its session's container, labelled like it (`orsbox.managed`, node, session),
carved as a /29 out of `SESSION_SUBNET_POOL` (Docker's own pools hold ~30 networks) and bridged by
`ob-<hash>`. Firewall rules are iptables rules in INPUT (packets to the host itself, which DOCKER-USER
never sees) and DOCKER-USER (forwarded packets), put first in their chain and marked
`-m comment --comment orsbox:<network>`: orsbox adds and removes exactly its own, in one atomic
`iptables-restore` each time. A network is removed after its container, its rules after the network,
and anything a crash left behind is removed by the sweep (`remove_orphans`).

Engine calls go through the backend's executor (`run`), iptables through asyncio subprocesses: nothing
here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import random
import re
import shlex
import shutil
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import docker.errors
import docker.types
import structlog

from ...agent.layout import LABEL_MANAGED, LABEL_NETWORK_MODE, LABEL_NODE, LABEL_SESSION
from ...errors import SandboxError
from ...metrics import Metrics
from ...policy import SandboxPolicy
from . import egress, limits
from .modes import PROXY_PORT, SESSION_SUBNET_POOL, SESSION_SUBNET_PREFIX, proxy_environment

log = structlog.get_logger()

RunEngine = Callable[..., Awaitable[Any]]  # DockerBackend._run(action, fn, *args, **kwargs)

LINK_LOCAL = "169.254.0.0/16"
COMMENT_PREFIX = "orsbox:"
BRIDGE_OPTION = "com.docker.network.bridge.name"
ALLOCATE_TRIES = 5  # subnets tried when another network took the one chosen meanwhile


@dataclass(frozen=True)
class SessionNetwork:
    """A session's own Docker network, as orsbox made it."""

    name: str
    mode: str  # "allowlist", "full" or "compose"
    session_id: str
    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address

    @property
    def proxy_url(self) -> str:
        return f"http://{self.gateway}:{PROXY_PORT}"

    def container_environment(self) -> dict[str, str]:
        """What the container's environment gets: the proxy variables, for allowlist sessions."""
        return proxy_environment(self.proxy_url) if self.mode == "allowlist" else {}

    @classmethod
    def from_engine(cls, attrs: dict[str, Any]) -> SessionNetwork:
        """The network as the engine describes it (`inspect_network`)."""
        labels = attrs.get("Labels") or {}
        config = next(c for c in (attrs.get("IPAM") or {}).get("Config") or [] if "." in c.get("Subnet", ""))
        bridge = (attrs.get("Options") or {}).get(BRIDGE_OPTION) or bridge_name(attrs["Name"])
        return cls(name=attrs["Name"], mode=labels.get(LABEL_NETWORK_MODE, "full"),
                   session_id=labels.get(LABEL_SESSION, ""), bridge=bridge,
                   subnet=ipaddress.IPv4Network(config["Subnet"]), gateway=ipaddress.IPv4Address(config["Gateway"]))


def bridge_name(network: str) -> str:
    """The bridge interface of `network` (15 characters at most, as Linux allows)."""
    return "ob-" + hashlib.sha256(network.encode()).hexdigest()[:12]


def subnet_pool() -> ipaddress.IPv4Network:
    """Where session subnets come from: `ORSBOX_NETWORK_POOL` (a CIDR) or `SESSION_SUBNET_POOL`."""
    pool = ipaddress.IPv4Network(os.environ.get("ORSBOX_NETWORK_POOL", SESSION_SUBNET_POOL))
    if pool.prefixlen > SESSION_SUBNET_PREFIX:
        raise SandboxError(f"ORSBOX_NETWORK_POOL {pool} is smaller than one /{SESSION_SUBNET_PREFIX}")
    return pool


# ---------------------------------------------------------------- firewall rules


def firewall_rules(network: SessionNetwork, pool: ipaddress.IPv4Network) -> list[tuple[str, str]]:
    """(chain, rule) pairs for `network`, in evaluation order, written as `iptables-save` prints them."""
    bridge, gateway, mark = network.bridge, f"{network.gateway}/32", _comment(network.name)
    if network.mode == "allowlist":
        proxy = f"-p tcp -m tcp --dport {PROXY_PORT}"
        return [
            # The host answers the session on the proxy's port only...
            ("INPUT", f"-d {gateway} -i {bridge} {proxy} {mark} -j ACCEPT"),
            ("INPUT", f"-i {bridge} {mark} -j DROP"),
            # ...and the proxy answers nobody else but the host itself (not other containers, not the LAN).
            ("INPUT", f"-d {gateway} ! -i {bridge} {proxy} -m addrtype ! --src-type LOCAL {mark} -j DROP"),
            # Docker forwards nothing for an internal network; neither does the firewall.
            ("DOCKER-USER", f"-i {bridge} {mark} -j DROP"),
            ("DOCKER-USER", f"-o {bridge} {mark} -j DROP"),
        ]
    if network.mode == "compose":
        return [
            ("INPUT", f"-i {bridge} {mark} -j DROP"),  # the host answers nothing
            # nothing in or out; between the network's own containers (bridged, seen here too) is allowed
            ("DOCKER-USER", f"-i {bridge} ! -o {bridge} {mark} -j DROP"),
            ("DOCKER-USER", f"! -i {bridge} -o {bridge} {mark} -j DROP"),
        ]
    return [
        ("INPUT", f"-i {bridge} {mark} -j DROP"),  # the host's own addresses, whichever interface holds them
        ("DOCKER-USER", f"-d {LINK_LOCAL} -i {bridge} {mark} -j DROP"),  # the metadata address among them
        ("DOCKER-USER", f"-d {pool} -i {bridge} {mark} -j DROP"),  # other sessions
        ("DOCKER-USER", f"-i {bridge} -m conntrack --ctstate DNAT {mark} -j DROP"),  # the host's published ports
    ]


def _comment(network: str) -> str:
    return f'-m comment --comment "{COMMENT_PREFIX}{network}"'


_OUR_RULE = re.compile(r'^-A (\S+) (.*--comment "?' + re.escape(COMMENT_PREFIX) + r'([^"\s]+)"?.*)$')


class Firewall:
    """orsbox's iptables rules (filter table), each marked with its network; changed atomically."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()  # one read-modify-write at a time in this process

    @staticmethod
    def problem() -> str | None:
        """Why orsbox cannot set firewall rules here, or None."""
        missing = [tool for tool in ("iptables-save", "iptables-restore") if shutil.which(tool) is None]
        if missing:
            return f"{' and '.join(missing)} not found: network modes other than none need iptables"
        if os.geteuid() != 0:
            return "network modes other than none need iptables, so orsbox must run as root"
        return None

    async def apply(self, network: str, rules: list[tuple[str, str]],
                    still_wanted: Callable[[], bool] = lambda: True) -> None:
        """Make `network`'s rules exactly `rules`, first in their chains (nothing done if they already are,
        or if `still_wanted()` says no once it is this call's turn)."""
        async with self._lock:
            if not still_wanted():
                return
            current = (await self._rules()).get(network, [])
            if current == [f"-A {chain} {rule}" for chain, rule in rules]:
                return
            edits = [_delete(line) for line in current]
            edits += [f"-I {chain} 1 {rule}" for chain, rule in reversed(rules)]
            await _restore(edits)

    async def remove(self, network: str) -> None:
        """Remove `network`'s rules, if any."""
        async with self._lock:
            current = (await self._rules()).get(network, [])
            if current:
                await _restore([_delete(line) for line in current])

    async def networks(self) -> set[str]:
        """The networks that have rules."""
        async with self._lock:
            return set(await self._rules())

    async def _rules(self) -> dict[str, list[str]]:
        """orsbox's rules by network, each as `iptables-save` prints it, in chain order."""
        out = await _iptables("iptables-save", "-t", "filter")
        found: dict[str, list[str]] = {}
        for line in out.splitlines():
            match = _OUR_RULE.match(line)
            if match and match.group(1) in ("INPUT", "DOCKER-USER"):
                found.setdefault(match.group(3), []).append(line)
        return found


def _delete(line: str) -> str:
    return "-D" + line[2:]


async def _restore(edits: Iterable[str]) -> None:
    """Apply edits to the filter table in one transaction (all or nothing), keeping every other rule."""
    await _iptables("iptables-restore", "-w", "--noflush", stdin="\n".join(["*filter", *edits, "COMMIT", ""]))


async def _iptables(*command: str, stdin: str | None = None) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise SandboxError(f"{command[0]}: {exc}") from exc
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip()
        raise SandboxError(f"{shlex.join(command)} failed ({proc.returncode}): {detail}")
    return out.decode(errors="replace")


# ---------------------------------------------------------------- networks


class SessionNetworks:
    """One node's session networks: made, restored after a restart, removed, swept."""

    def __init__(self, run: RunEngine, client: Any, *, node_id: str, mtu: str | None = None,
                 metrics: Metrics | None = None) -> None:
        self._run, self._client, self.node_id, self.mtu = run, client, node_id, mtu
        self.metrics = metrics
        self.pool = subnet_pool()
        self.firewall = Firewall()
        self._proxies: dict[str, egress.EgressProxy] = {}
        self._budget = limits.Budget()  # what the proxies share
        self._live: dict[str, SessionNetwork] = {}  # made or restored by this process, not yet removed
        self._allocating: set[ipaddress.IPv4Network] = set()  # chosen, not yet known to the engine

    async def create(self, name: str, session_id: str, policy: SandboxPolicy,
                     labels: dict[str, str], mode: str | None = None) -> SessionNetwork:
        """Make `name` (in the policy's network mode unless `mode` says), its firewall rules and (allowlist)
        its proxy; on failure, what was made is removed."""
        problem = Firewall.problem()
        if problem:
            raise SandboxError(problem)
        mode = mode or policy.network
        labels = {**labels, LABEL_SESSION: session_id, LABEL_NETWORK_MODE: mode}
        try:
            network = await self._create_network(name, mode, labels)
            await self.firewall.apply(name, firewall_rules(network, self.pool))
            if network.mode == "allowlist":
                await self._start_proxy(network, policy)
            self._live[name] = network
        except BaseException:
            await self.remove(name)
            raise
        log.info("network_created", network=name, mode=network.mode, subnet=str(network.subnet))
        return network

    async def restore(self, name: str, policy: SandboxPolicy) -> None:
        """After a restart, for an adopted session: its rules as they must be and (allowlist) its proxy again.

        A session without a network of its own (network "none") has nothing to restore.
        """
        try:
            attrs = await self._run("inspect network", self._client.api.inspect_network, name)
        except SandboxError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return
            raise
        network = SessionNetwork.from_engine(attrs)
        await self.firewall.apply(name, firewall_rules(network, self.pool))
        if network.mode == "allowlist" and name not in self._proxies:
            await self._start_proxy(network, policy)
        self._live[name] = network

    async def replace_allowlist(self, name: str, allow: Sequence[str]) -> None:
        """The allowlist network `name`'s proxy allows `allow` from now on (its open connections are cut)."""
        proxy = self._proxies.get(name)
        if proxy is None:
            raise SandboxError(f"{name} has no egress proxy here: its network is not an allowlist one")
        await proxy.replace_allowlist(allow)

    async def remove(self, name: str) -> None:
        """Stop the proxy, remove the network, then its rules. Idempotent; never raises (failures are
        logged, and the sweep retries: rules stay as long as their network does)."""
        ours = self._live.pop(name, None) is not None
        proxy = self._proxies.pop(name, None)
        if proxy is not None:
            await proxy.close()
        try:
            await self._run("remove network", self._client.api.remove_network, name)
        except SandboxError as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound):
                log.warning("network_remove_failed", network=name, error=exc.detail)
                return
            if not ours and proxy is None:
                return  # not made here: a session without a network of its own, or the sweep's business
        await self._remove_rules(name)

    async def remove_orphans(self, live_sessions: set[str], containers: set[str]) -> None:
        """Remove this node's networks that neither a live session nor a left container has, and every
        orsbox rule whose network is gone; put back the rules of live networks if someone removed them
        (a firewall reload)."""
        networks = await self._run("list networks", self._client.api.networks,
                                   filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_NODE}={self.node_id}"]})
        for attrs in networks:
            name, labels = attrs["Name"], attrs.get("Labels") or {}
            if labels.get(LABEL_SESSION) in live_sessions or name in containers:
                continue
            log.warning("orphan_network_removed", network=name, session_id=labels.get(LABEL_SESSION))
            await self.remove(name)
        if Firewall.problem() is None:
            existing = {attrs["Name"] for attrs in await self._run("list networks", self._client.api.networks)}
            for name in await self.firewall.networks() - existing:
                log.warning("orphan_firewall_rules_removed", network=name)
                await self._remove_rules(name)
            for network in list(self._live.values()):
                await self._heal(network)

    async def close(self) -> None:
        """Stop every proxy (networks stay: sessions kept for adoption still need them)."""
        proxies, self._proxies = list(self._proxies.values()), {}
        await asyncio.gather(*(proxy.close() for proxy in proxies))
        self._budget.close()

    # -- helpers ---------------------------------------------------------------

    async def _create_network(self, name: str, mode: str, labels: dict[str, str]) -> SessionNetwork:
        options = {BRIDGE_OPTION: bridge_name(name),
                   "com.docker.network.bridge.enable_icc": "true" if mode == "compose" else "false"}
        if self.mtu:
            options["com.docker.network.driver.mtu"] = self.mtu
        for attempt in range(ALLOCATE_TRIES):
            subnet = await self._choose_subnet()
            gateway = next(subnet.hosts())
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet),
                                                                               gateway=str(gateway))])
            try:
                await self._run("create network", self._client.api.create_network, name, driver="bridge",
                                internal=mode in ("allowlist", "compose"), labels=labels, options=options, ipam=ipam,
                                check_duplicate=True)
            except SandboxError as exc:
                if "overlap" not in exc.detail or attempt == ALLOCATE_TRIES - 1:
                    raise
                continue  # another network took this subnet meanwhile
            finally:
                self._allocating.discard(subnet)
            return SessionNetwork(name, mode, labels[LABEL_SESSION], bridge_name(name), subnet, gateway)
        raise AssertionError("unreachable")

    async def _choose_subnet(self) -> ipaddress.IPv4Network:
        """A free /29 of the pool, at random (so nodes sharing an engine rarely pick the same)."""
        networks = await self._run("list networks", self._client.api.networks)
        taken = [ipaddress.ip_network(config["Subnet"]) for attrs in networks
                 for config in (attrs.get("IPAM") or {}).get("Config") or [] if "." in config.get("Subnet", "")]
        taken += self._allocating
        count = 2 ** (SESSION_SUBNET_PREFIX - self.pool.prefixlen)
        size = 2 ** (32 - SESSION_SUBNET_PREFIX)
        for _ in range(4 * count):
            start = self.pool.network_address + random.randrange(count) * size
            subnet = ipaddress.IPv4Network(f"{start}/{SESSION_SUBNET_PREFIX}")
            if not any(subnet.overlaps(other) for other in taken):
                self._allocating.add(subnet)
                return subnet
        raise SandboxError(f"no free /{SESSION_SUBNET_PREFIX} left in {self.pool} for a session network")

    async def _start_proxy(self, network: SessionNetwork, policy: SandboxPolicy) -> None:
        proxy = egress.EgressProxy(session_id=network.session_id, network=network.name, allow=policy.allow,
                                   host=str(network.gateway), port=PROXY_PORT, pool=self.pool,
                                   limits=limits.DEFAULT_LIMITS, budget=self._budget,  # read here: tests replace it
                                   metrics=self.metrics)
        try:
            await proxy.start()
        except OSError as exc:
            raise SandboxError(f"the egress proxy cannot listen on {network.gateway}:{PROXY_PORT}: {exc}") from exc
        self._proxies[network.name] = proxy

    async def _heal(self, network: SessionNetwork) -> None:
        """The rules of a live network as they must be (nothing done when they are)."""
        try:
            await self.firewall.apply(network.name, firewall_rules(network, self.pool),
                                      still_wanted=lambda: network.name in self._live)  # not removed meanwhile
        except SandboxError as exc:
            log.warning("firewall_apply_failed", network=network.name, error=exc.detail)

    async def _remove_rules(self, name: str) -> None:
        try:
            await self.firewall.remove(name)
        except SandboxError as exc:
            log.warning("firewall_remove_failed", network=name, error=exc.detail)
