"""The network modes' fixed facts: where session subnets come from, the proxy's port, the DNS cut, and what
each mode means for a session (for `orsbox policy explain`).

`networks.py` makes the networks and their firewall rules from these, `egress.py` is the proxy, and the
Docker backend's container settings (`backends/docker/settings.py`) put a container on its network.
"""

from __future__ import annotations

from ...policy import SandboxPolicy
from .limits import DEFAULT_LIMITS

#: Network modes on a Docker network of their own: the subnets orsbox carves them from (one /29 each; the
#: firewall blocks the whole pool to every session), and the egress proxy's port on each network's gateway.
SESSION_SUBNET_POOL = "10.73.0.0/16"
SESSION_SUBNET_PREFIX = 29
PROXY_PORT = 3128
#: What an allowlist session's container uses as DNS server: its own loopback, where nothing answers, so
#: Docker's embedded DNS cannot forward a name out (the proxy resolves names, on the host).
ALLOWLIST_DNS = ["127.0.0.1"]
ALLOWLIST_DNS_OPTIONS = ["timeout:1", "attempts:1"]  # a name fails in 1 s instead of 10


def proxy_environment(proxy_url: str) -> dict[str, str]:
    """The variables that send an allowlist session's HTTP(S) clients (pip, urllib, curl, git) to the proxy."""
    no_proxy = "localhost,127.0.0.1,::1"
    return {"HTTP_PROXY": proxy_url, "HTTPS_PROXY": proxy_url, "http_proxy": proxy_url, "https_proxy": proxy_url,
            "NO_PROXY": no_proxy, "no_proxy": no_proxy}


def network_summary(policy: SandboxPolicy) -> list[str]:
    """What the policy's network mode means for a session, for `orsbox policy explain`."""
    refused = ("loopback, link-local (169.254.0.0/16, the metadata address), this host's own addresses, "
               f"orsbox's session networks ({SESSION_SUBNET_POOL})")
    if policy.network == "none":
        return ["none: only loopback; no interface, no route, no DNS"]
    if policy.network == "full":
        return [f"full: a bridge network of its own per session (a /{SESSION_SUBNET_PREFIX} of "
                f"{SESSION_SUBNET_POOL}, inter-container traffic off), removed with the session",
                "  egress: what the host routes to, through NAT; DNS through Docker's embedded server",
                f"  blocked by orsbox's firewall rules (iptables INPUT and DOCKER-USER, comment orsbox:<network>): "
                f"{refused}, and the host's published ports"]
    return [f"allowlist: an internal Docker network of its own per session (a /{SESSION_SUBNET_PREFIX} of "
            f"{SESSION_SUBNET_POOL}), removed with the session",
            f"  egress only through orsbox's HTTP proxy on the network's gateway, port {PROXY_PORT} "
            "(CONNECT for TLS, absolute-URI requests for plain HTTP), set as HTTP(S)_PROXY for commands",
            f"  allowed: {', '.join(policy.allow)}; anything else is answered 403 and logged (egress_denied)",
            f"  per session: {DEFAULT_LIMITS.connections} connections at once, {DEFAULT_LIMITS.head_timeout:g} s "
            f"for a request head, a tunnel closed after {DEFAULT_LIMITS.idle_timeout:g} s idle and "
            f"{DEFAULT_LIMITS.lifetime:g} s in all",
            "  names are resolved by the proxy on the host; inside the container DNS fails "
            f"(dns {' '.join(ALLOWLIST_DNS)})",
            f"  refused whatever the list says (checked on the resolved address): {refused}",
            "  the firewall (iptables, comment orsbox:<network>) drops everything else from the network, "
            "the host's other ports included"]
