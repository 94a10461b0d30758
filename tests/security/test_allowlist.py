"""Network "allowlist": egress only to the listed host:port entries, only through orsbox's proxy.

Every target is a test server on a Docker network the tests made (or the host's own address on one):
`web_server` is the allowlisted host, `other_server` one that is not listed, `metadata_server` answers
at 169.254.169.254. The proxy runs in this process, so names are made resolvable for it (and only it)
by replacing its resolver; the container itself resolves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import docker
import pytest
import structlog

from orsbox.backends.network import egress, limits
from orsbox.backends.network.limits import Limits
from orsbox.backends.network.modes import PROXY_PORT

from ..support.ors import Ors
from .conftest import METADATA_IP, NetServer, gateway_of, reaches_from_the_host
from .probe import parse, probe_command

pytestmark = pytest.mark.docker


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch, web_server: NetServer) -> dict[str, list[str]]:
    """Names only the proxy resolves (on top of the host's own resolver): edit the dict to add some."""
    table = {"allowed.test": [web_server.ip]}
    real = egress.resolve

    async def resolve(host: str, port: int, executor: Executor | None = None) -> list[str]:
        return table[host] if host in table else await real(host, port, executor)

    monkeypatch.setattr(egress, "resolve", resolve)
    return table


async def test_only_allowlisted_hosts_are_reached_and_only_through_the_proxy(
    network_app: Callable[[str], Awaitable[Ors]], engine: docker.DockerClient, names: dict[str, list[str]],
    web_server: NetServer, other_server: NetServer, metadata_server: NetServer,
    host_listener: Callable[[str], Awaitable[int]],
) -> None:
    names.update({"rebind.test": [METADATA_IP], "host.test": [web_server.gateway]})
    allow = [f"{web_server.ip}:80", "allowed.test:80", "*.wild.test:80", f"{METADATA_IP}:80", "rebind.test:80",
             "host.test:80", "localhost:80"]
    names["a.wild.test"] = [web_server.ip]
    ors = await network_app(f'network = "allowlist"\nallow = {allow!r}'.replace("'", '"'))
    sid = await ors.new_session()
    await ors.prompt(sid)
    gateway = gateway_of(engine, sid)
    env = await ors.bash(sid, "env | grep -i _proxy | sort")
    assert f"HTTPS_PROXY=http://{gateway}:{PROXY_PORT}" in env.text.splitlines()
    assert f"http_proxy=http://{gateway}:{PROXY_PORT}" in env.text.splitlines()

    listening = await host_listener(gateway)
    assert await reaches_from_the_host(gateway, listening)
    steps: list[list[Any]] = [
        ["get", f"http://{web_server.ip}/"],  # 0: allowed, through the proxy (urllib honours HTTP_PROXY)
        ["get", "http://allowed.test/"],  # 1: by a name the proxy resolves
        ["get", "http://a.wild.test/"],  # 2: by a wildcard
        ["connect", web_server.ip, 80],  # 3: a raw CONNECT tunnel
        ["get", f"http://{other_server.ip}/"],  # 4: not listed
        ["connect", other_server.ip, 80],  # 5
        ["connect", web_server.ip, 8080],  # 6: listed host, another port
        ["get", f"http://{METADATA_IP}/"],  # 7: the metadata address, listed by address
        ["get", "http://rebind.test/"],  # 8: ... and by a name that resolves to it
        ["get", "http://host.test/"],  # 9: a name resolving to the host's own address
        ["get", "http://localhost/"],  # 10: loopback (NO_PROXY: the container's own)
        ["connect", "localhost", 80],  # 11: loopback, through the proxy: the host's
        ["direct", web_server.ip, 80],  # 12: bypassing the proxy
        ["direct", other_server.ip, 80],  # 13
        ["direct", METADATA_IP, 80],  # 14
        ["direct", gateway, listening],  # 15: the host itself, another port
        ["direct", gateway, PROXY_PORT],  # 16: the control: the proxy's port answers
        ["resolve", "example.com"],  # 17: no DNS inside
        ["dns", "example.com"],  # 18: Docker's embedded DNS forwards nothing out
    ]
    with structlog.testing.capture_logs() as logs:
        results = parse((await ors.bash(sid, probe_command(steps), timeout=60)).text)
    assert results[0:3] == [200, 200, 200]
    assert results[3].startswith("200 HTTP/1.0 200"), results[3]
    assert results[4] == 403
    assert results[5].startswith("403 orsbox egress proxy:") and "not in this session's allowlist" in results[5]
    assert results[6].startswith("403")
    assert results[7] == 403 and results[8] == 403 and results[9] == 403
    assert str(results[10]).startswith("URLError")  # its own loopback, where nothing listens
    assert results[11].startswith("403") and "loopback" in results[11]
    assert results[12:16] == ["timed out"] * 4
    assert results[16] == "connected"
    assert "Temporary failure in name resolution" in results[17] or "Name or service not known" in results[17]
    assert results[18] in ("no answer", 2, 5)  # never NOERROR (0) nor NXDOMAIN (3): no server was asked
    denied = [event for event in logs if event["event"] == "egress_denied"]
    assert {event["session_id"] for event in denied} == {sid}
    reasons = {(event["host"], event["reason"].split(" refused: ")[-1].split(" is ")[-1]) for event in denied}
    assert (other_server.ip, "not in this session's allowlist") in reasons
    assert ("rebind.test", "link-local (169.254.0.0/16 holds the cloud metadata address)") in reasons
    assert ("host.test", "an address of this host") in reasons
    assert ("localhost", "a loopback address") in reasons
    allowed = [event for event in logs if event["event"] == "egress"]
    assert {event["host"] for event in allowed} == {web_server.ip, "allowed.test", "a.wild.test"}
    await ors.delete(sid)


async def test_the_proxy_refuses_what_is_not_a_proxy_request(
    network_app: Callable[[str], Awaitable[Ors]], engine: docker.DockerClient, web_server: NetServer,
) -> None:
    ors = await network_app(f'network = "allowlist"\nallow = ["{web_server.ip}:80"]')
    sid = await ors.new_session()
    requests = {
        "origin": "GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",  # not absolute: the proxy is no web server
        "https": f"GET https://{web_server.ip}/ HTTP/1.1\\r\\n\\r\\n",
        "garbage": "\\x16\\x03\\x01 hello\\r\\n\\r\\n",
        "huge": "GET http://x/ HTTP/1.1\\r\\nX: " + "a" * 70000 + "\\r\\n\\r\\n",
        "smuggle": f"GET http://{web_server.ip}@{web_server.gateway}:{PROXY_PORT}/ HTTP/1.1\\r\\n\\r\\n",
    }
    script = "\n".join([
        "import os, socket, urllib.parse",
        "proxy = urllib.parse.urlsplit(os.environ['HTTP_PROXY'])",
        *[f"s = socket.create_connection((proxy.hostname, proxy.port), timeout=10); s.sendall(b'{raw}'); "
          f"print('{name}', s.recv(100).split(b'\\r\\n')[0].decode())" for name, raw in requests.items()],
    ])
    out = await ors.bash(sid, f"python3 - <<'PY'\n{script}\nPY", timeout=60)
    statuses = dict(line.split(" ", 1) for line in out.text.splitlines())
    assert statuses == {"origin": "HTTP/1.1 400 Bad Request", "https": "HTTP/1.1 400 Bad Request",
                        "garbage": "HTTP/1.1 400 Bad Request", "huge": "HTTP/1.1 431 Request Header Fields Too Large",
                        "smuggle": "HTTP/1.1 403 Forbidden"}
    await ors.delete(sid)


HOSTILE_CLIENT = r'''
import json, os, socket, time, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
web = os.environ["WEB"]

def connection():
    return socket.create_connection((proxy.hostname, proxy.port), timeout=20)

def answer(sock):
    """Everything the proxy sends until it closes: its status line, and whether it did close."""
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data.split(b"\r\n")[0].decode(), "closed"
            data += chunk
    except socket.timeout:
        return data.split(b"\r\n")[0].decode(), "open"

def tunnel():
    sock = connection()
    sock.sendall(("CONNECT %s:80 HTTP/1.1\r\n\r\n" % web).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock

results = {}
sock = connection()
sock.sendall(("CONNECT %s:80 HTTP/1.1\r\n" % web).encode())  # and never the end of the head
results["no head"] = answer(sock)
sock = connection()
sock.sendall(("GET http://%s/ HTTP/1.1\r\nHost: intranet.test\r\n\r\n" % web).encode())
results["another Host"] = answer(sock)
results["idle tunnel"] = answer(tunnel())[1]
held = [tunnel() for _ in range(4)]
sock = connection()
sock.sendall(("CONNECT %s:80 HTTP/1.1\r\n\r\n" % web).encode())
results["fifth connection"] = answer(sock)
for sock in held:
    sock.close()
for _ in range(100):  # until the proxy has seen the four go (another host, so that the count below is exact)
    sock = connection()
    sock.sendall(b"CONNECT wait.test:443 HTTP/1.1\r\n\r\n")
    if answer(sock)[0] == "HTTP/1.1 403 Forbidden":
        break
    time.sleep(0.05)
denied = []
for _ in range(100):
    sock = connection()
    sock.sendall(b"CONNECT denied.test:443 HTTP/1.1\r\n\r\n")
    denied.append(answer(sock)[0])
results["denied"] = sorted(set(denied))
print(json.dumps(results))
'''


async def test_a_hostile_session_can_neither_hold_the_proxy_nor_flood_its_log(
    network_app: Callable[[str], Awaitable[Ors]], web_server: NetServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "DEFAULT_LIMITS", Limits(head_timeout=1, idle_timeout=1, connections=4,
                                                         denial_interval=3600))
    ors = await network_app(f'network = "allowlist"\nallow = ["{web_server.ip}:80"]')
    sid = await ors.new_session()
    with structlog.testing.capture_logs() as logs:
        out = await ors.bash(sid, f"WEB={web_server.ip} python3 - <<'PY'\n{HOSTILE_CLIENT}\nPY", timeout=120)
        results = json.loads(out.text.strip().splitlines()[-1])
        during = [event for event in logs if event["event"] == "egress_denied" and event["host"] == "denied.test"]
        await ors.delete(sid)  # the proxy closes: the denials it counted are logged
    assert results == {"no head": ["HTTP/1.1 408 Request Timeout", "closed"],
                       "another Host": ["HTTP/1.1 400 Bad Request", "closed"],
                       "idle tunnel": "closed",
                       "fifth connection": ["HTTP/1.1 429 Too Many Requests", "closed"],
                       "denied": ["HTTP/1.1 403 Forbidden"]}
    assert [event["count"] for event in during] == [1]
    repeated = [event for event in logs if event["event"] == "egress_denied" and event["host"] == "denied.test"]
    assert [event["count"] for event in repeated] == [1, 99]
    idle = [event for event in logs if event["event"] == "egress" and event.get("end") == "idle"]
    assert idle and {event["session_id"] for event in idle} == {sid}
