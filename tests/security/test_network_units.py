"""The network modes' pure parts, without Docker: policy fields, allowlist matching, refused addresses,
proxy request parsing, firewall rules, container settings, runtimes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from orsbox.backends.docker.settings import container_settings, docker_runtime, explain_sections, runtime_problem
from orsbox.backends.network.egress import MAX_HEADERS, Allowlist, Refused, parse_request, refusal
from orsbox.backends.network.modes import PROXY_PORT, SESSION_SUBNET_POOL
from orsbox.backends.network.networks import SessionNetwork, bridge_name, firewall_rules
from orsbox.errors import ConfigError
from orsbox.policy import PolicySet, SandboxPolicy, explanation

POOL = ipaddress.IPv4Network(SESSION_SUBNET_POOL)


def allowlist(*entries: str) -> SandboxPolicy:
    return SandboxPolicy(network="allowlist", allow=entries)


# ---------------------------------------------------------------- policy


def test_allow_entries_are_checked_and_written_one_way() -> None:
    policy = allowlist("PyPI.Example.com.:443", "*.Example.com:443", "10.0.0.5:8080", "pypi.example.com:443")
    assert policy.allow == ("pypi.example.com:443", "*.example.com:443", "10.0.0.5:8080")


@pytest.mark.parametrize(("entry", "says"), [
    ("pypi.example.com", "not host:port"),
    ("pypi.example.com:0", "not host:port"),
    ("pypi.example.com:65536", "not host:port"),
    ("pypi.example.com:https", "not host:port"),
    ("[::1]:443", "IPv6 addresses are not supported"),
    ("*.10.0.0.5:443", "a wildcard takes a name"),
    ("10.0.0.256:443", "is not an IPv4 address"),
    ("010.0.0.1:80", "is not an IPv4 address"),
    ("1.2.3:80", "is not an IPv4 address"),
    ("bad host:443", "is not a host name"),
    ("*:443", "is not a host name"),
    ("a..b:443", "is not a host name"),
    ("example.123:443", "is not a host name"),
])
def test_a_bad_allow_entry_is_refused_with_what_is_allowed(entry: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        allowlist(entry)


def test_allow_only_goes_with_allowlist_and_allowlist_needs_it() -> None:
    with pytest.raises(ValueError, match="network is 'none'"):
        SandboxPolicy(allow=("pypi.example.com:443",))
    with pytest.raises(ValueError, match="needs at least one allow entry"):
        SandboxPolicy(network="allowlist")


def test_a_policy_file_with_a_bad_network_names_the_field(tmp_path: Path) -> None:
    folder = tmp_path
    (folder / "bash.toml").write_text('network = "bridge"\n')
    (folder / "python.toml").write_text('network = "allowlist"\nallow = ["pypi.example.com"]\n')
    (folder / "coding.toml").write_text('allow = ["pypi.example.com:443"]\n')
    _, problems = PolicySet.read(folder)
    text = "\n".join(problems)
    assert "bash.toml: field network: Input should be 'none', 'allowlist' or 'full'" in text
    assert "python.toml: field allow" in text and "'pypi.example.com' is not host:port" in text
    assert "coding.toml" in text and "set network = \"allowlist\" or remove allow" in text
    with pytest.raises(ConfigError):
        PolicySet.load(folder)


def test_policies_with_a_network_need_a_firewall() -> None:
    policies = PolicySet({"bash": {"network": "full"}, "python": {}})
    assert policies.network_problems(None) == []
    assert policies.network_problems("no iptables") == ["built-in defaults: network = 'full': no iptables"]
    with pytest.raises(ConfigError, match="no iptables"):
        policies.require_network("no iptables")
    PolicySet({"python": {}}).require_network("no iptables")  # nothing asks for a network


def test_explain_shows_the_network(tmp_path: Path) -> None:
    folder = tmp_path
    (folder / "bash.toml").write_text('network = "allowlist"\nallow = ["pypi.example.com:443", "*.example.net:443"]\n')
    policies = PolicySet.load(folder)
    text = explanation(policies, "bash", sections=explain_sections(policies.resolve("bash")))
    assert 'allow             ["pypi.example.com:443", "*.example.net:443"]' in text
    assert f"egress only through orsbox's HTTP proxy on the network's gateway, port {PROXY_PORT}" in text
    assert "allowed: pypi.example.com:443, *.example.net:443" in text
    assert "per session: 64 connections at once, 5 s for a request head, a tunnel closed after 60 s idle" in text
    assert '"dns": [\n    "127.0.0.1"\n  ]' in text
    full = PolicySet({"bash": {"network": "full"}})
    assert "full: a bridge network" in explanation(full, "bash", sections=explain_sections(full.resolve("bash")))


def test_container_settings_per_mode() -> None:
    none = container_settings(SandboxPolicy())
    assert none["network_mode"] == "none" and "network" not in none
    full = container_settings(SandboxPolicy(network="full"), "orsbox-x")
    assert full["network"] == "orsbox-x" and "network_mode" not in full and "dns" not in full
    allow = container_settings(allowlist("pypi.example.com:443"), "orsbox-y")
    assert allow["network"] == "orsbox-y" and allow["dns"] == ["127.0.0.1"]


def test_runsc_on_a_network_uses_the_host_network_runtime() -> None:
    assert docker_runtime(SandboxPolicy(runtime="runsc")) == "orsbox-runsc"
    assert docker_runtime(SandboxPolicy(runtime="runsc", network="full")) == "orsbox-runsc-host"
    assert docker_runtime(allowlist("a.b:1").model_copy(update={"runtime": "runsc"})) == "orsbox-runsc-host"
    problem = runtime_problem(SandboxPolicy(runtime="runsc", network="full"), {"orsbox-runsc": ["--network=none"]})
    assert problem is not None and "'orsbox-runsc-host'" in problem and "--network=host" in problem
    wrong = runtime_problem(SandboxPolicy(runtime="runsc", network="full"),
                            {"orsbox-runsc-host": ["--network=none", "--host-uds=open"]})
    assert wrong is not None and "without --network=host" in wrong
    assert runtime_problem(SandboxPolicy(runtime="runsc", network="full"),
                           {"orsbox-runsc-host": ["--network=host", "--host-uds=all"]}) is None


# ---------------------------------------------------------------- the proxy's checks


@pytest.mark.parametrize(("host", "port", "allowed"), [
    ("pypi.example.com", 443, True),
    ("PYPI.EXAMPLE.COM.", 443, True),
    ("pypi.example.com", 80, False),
    ("evil-pypi.example.com", 443, False),
    ("files.example.net", 443, True),
    ("a.b.example.net", 443, True),
    ("example.net", 443, False),  # a wildcard covers sub-domains only
    ("evilexample.net", 443, False),
    ("10.0.0.5", 8080, True),
    ("10.0.0.05", 8080, False),  # not the address as listed (and getaddrinfo might read it otherwise)
    ("*.example.net", 443, False),
    ("pypi.example.com\r\nX: y", 443, False),
    ("", 443, False),
])
def test_the_allowlist_matches_names_wildcards_and_addresses(host: str, port: int, allowed: bool) -> None:
    rules = Allowlist(["pypi.example.com:443", "*.example.net:443", "10.0.0.5:8080"])
    assert rules.allows(host, port) is allowed


@pytest.mark.parametrize(("address", "says"), [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"),
    ("::ffff:169.254.169.254", "link-local"),
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of the metadata address
    ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of it
    ("fe80::1", "link-local"),
    ("0.0.0.0", "not a unicast address"),
    ("224.0.0.1", "not a unicast address"),
    ("255.255.255.255", "not a unicast address"),
    ("10.73.5.9", "orsbox's session networks"),
])
def test_addresses_the_proxy_never_connects_to(address: str, says: str) -> None:
    reason = refusal(ipaddress.ip_address(address), POOL)
    assert reason is not None and says in reason


def test_an_ordinary_address_is_not_refused() -> None:
    assert refusal(ipaddress.ip_address("203.0.113.7"), POOL) is None


def test_a_connect_request() -> None:
    request = parse_request(b"CONNECT pypi.example.com:443 HTTP/1.1\r\nHost: pypi.example.com:443\r\n\r\n")
    assert (request.method, request.host, request.port) == ("CONNECT", "pypi.example.com", 443)
    assert request.upstream_head == b""


def test_a_plain_http_request_is_sent_on_in_origin_form_and_closes() -> None:
    request = parse_request(b"GET http://example.org:8080/a?b=1 HTTP/1.1\r\nHost: example.org:8080\r\n"
                            b"Proxy-Connection: keep-alive\r\nProxy-Authorization: x\r\nAccept: */*\r\n\r\n")
    assert (request.host, request.port) == ("example.org", 8080)
    assert request.upstream_head == (b"GET /a?b=1 HTTP/1.1\r\nHost: example.org:8080\r\nAccept: */*\r\n"
                                     b"Connection: close\r\n\r\n")
    bare = parse_request(b"POST http://user:pw@example.org HTTP/1.0\r\n\r\n")
    assert (bare.host, bare.port) == ("example.org", 80)
    assert bare.upstream_head == b"POST / HTTP/1.0\r\nHost: example.org\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize(("host", "url"), [
    ("example.org", "http://example.org/"),
    ("Example.ORG.", "http://example.org/"),
    ("example.org:80", "http://example.org/"),
    ("example.org", "http://example.org:80/"),
    ("example.org:8080", "http://user@example.org:8080/"),
    ("example.org", "http://example.org:/"),
])
def test_a_host_header_naming_the_urls_host_is_kept(host: str, url: str) -> None:
    request = parse_request(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert f"\r\nHost: {host}\r\n".encode() in request.upstream_head


@pytest.mark.parametrize(("head", "says"), [
    # a listed URL, but a Host the upstream may serve as another (name-based) virtual host
    (b"GET http://allowed.example/ HTTP/1.1\r\nHost: forbidden.example\r\n\r\n", "Host header"),
    (b"GET http://allowed.example:8080/ HTTP/1.1\r\nHost: allowed.example\r\n\r\n", "Host header"),
    (b"GET http://allowed.example/ HTTP/1.1\r\nHost: allowed.example\r\nHost: forbidden.example\r\n\r\n",
     "more than one Host"),
    (b"GET http://allowed.example/ HTTP/1.1\r\nHost: forbidden.example@allowed.example\r\n\r\n", "Host header"),
    (b"GET http://allowed.example/ HTTP/1.1\r\nHost:\r\n\r\n", "Host header"),
    # header lines an upstream may read otherwise than the proxy
    (b"GET http://allowed.example/ HTTP/1.1\r\nX: a\r\n Host: forbidden.example\r\n\r\n", "header line"),
    (b"GET http://allowed.example/ HTTP/1.1\r\nHost : forbidden.example\r\n\r\n", "header line"),
    (b"GET http://allowed.example/ HTTP/1.1\r\nX: a\nHost: forbidden.example\r\n\r\n", "control character"),
    (b"GET http://allowed.example/ HTTP/1.1\r\nX: a\rHost: forbidden.example\r\n\r\n", "control character"),
    (b"GET http://allowed.example/ HTTP/1.1\r\nX: a\x00b\r\n\r\n", "control character"),
    (b"GET http://allowed.example/\nHost:forbidden.example HTTP/1.1\r\n\r\n", "request line"),
    (b"CONNECT forbidden.example@allowed.example:443 HTTP/1.1\r\n\r\n", "host:port"),
    (b"CONNECT allowed.example:443/x HTTP/1.1\r\n\r\n", "host:port"),
])
def test_a_request_an_upstream_could_read_otherwise_is_a_400(head: bytes, says: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_request(head)
    assert refused.value.status == 400 and says in refused.value.reason


def test_a_head_with_too_many_headers_is_a_431() -> None:
    headers = "".join(f"X-{i}: y\r\n" for i in range(MAX_HEADERS + 1))
    with pytest.raises(Refused) as refused:
        parse_request(f"GET http://example.org/ HTTP/1.1\r\n{headers}\r\n".encode())
    assert refused.value.status == 431
    parse_request(f"GET http://example.org/ HTTP/1.1\r\n{headers.partition(chr(10))[2]}\r\n".encode())


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET https://example.org/ HTTP/1.1\r\n\r\n",
    b"GET http://example.org:99999/ HTTP/1.1\r\n\r\n",
    b"CONNECT example.org HTTP/1.1\r\n\r\n",
    b"CONNECT example.org:443 SPDY/3\r\n\r\n",
    b"\x16\x03\x01\x02\x00\r\n\r\n",
    b"GET http://[example.org/ HTTP/1.1\r\n\r\n",
])
def test_what_is_not_a_proxy_request_is_a_400(head: bytes) -> None:
    with pytest.raises(Refused) as refused:
        parse_request(head)
    assert refused.value.status == 400


# ---------------------------------------------------------------- firewall rules


def network(mode: str) -> SessionNetwork:
    return SessionNetwork("orsbox-abc-123", mode, "s1", bridge_name("orsbox-abc-123"),
                          ipaddress.IPv4Network("10.73.0.8/29"), ipaddress.IPv4Address("10.73.0.9"))


def test_allowlist_rules_let_the_session_reach_the_proxy_port_only() -> None:
    rules = firewall_rules(network("allowlist"), POOL)
    bridge = bridge_name("orsbox-abc-123")
    assert len(bridge) <= 15
    assert rules[0] == ("INPUT", f'-d 10.73.0.9/32 -i {bridge} -p tcp -m tcp --dport {PROXY_PORT} '
                                 f'-m comment --comment "orsbox:orsbox-abc-123" -j ACCEPT')
    assert rules[1] == ("INPUT", f'-i {bridge} -m comment --comment "orsbox:orsbox-abc-123" -j DROP')
    assert {chain for chain, _ in rules} == {"INPUT", "DOCKER-USER"}
    assert all('--comment "orsbox:orsbox-abc-123"' in rule for _, rule in rules)


def test_full_rules_drop_the_host_link_local_other_sessions_and_published_ports() -> None:
    rules = [rule for _, rule in firewall_rules(network("full"), POOL)]
    assert any(rule.startswith("-i ob-") and rule.endswith("-j DROP") for rule in rules)  # INPUT: the host
    assert any("-d 169.254.0.0/16" in rule for rule in rules)
    assert any(f"-d {SESSION_SUBNET_POOL}" in rule for rule in rules)
    assert any("--ctstate DNAT" in rule for rule in rules)
