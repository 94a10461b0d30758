"""Network "none": a session has only loopback, and no address answers, not even one that is up next door.

The fixture starts a small HTTP server at 169.254.169.254 (the cloud metadata address) on an internal
Docker network of its own, and shows that a container on that network does reach it; a session cannot.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import docker
import pytest

from ..conftest import Ors

pytestmark = pytest.mark.docker

METADATA_IP = "169.254.169.254"
GATEWAY_IP = "169.254.169.1"
TEST_LABELS = {"orsbox.test": "1"}


@pytest.fixture
def metadata_server(engine: docker.DockerClient, images: None) -> Iterator[str]:
    """An HTTP server at 169.254.169.254:80 on a new internal network; both removed afterwards."""
    network = engine.networks.create(
        f"orsbox-test-{uuid.uuid4().hex[:8]}", driver="bridge", internal=True, labels=TEST_LABELS,
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="169.254.169.0/24",
                                                                          gateway=GATEWAY_IP)]))
    server = None
    try:
        server = engine.containers.create("orsbox/base", ["python3", "-m", "http.server", "80"], labels=TEST_LABELS,
                                          network=network.name, detach=True)
        network.disconnect(server)
        network.connect(server, ipv4_address=METADATA_IP)
        server.start()
        _reachable_from_the_same_network(engine, network.name)
        yield METADATA_IP
    finally:
        if server is not None:
            server.remove(force=True, v=True)
        network.remove()


def _reachable_from_the_same_network(engine: docker.DockerClient, network: str) -> None:
    """The control: on that network the server does answer (so the session's failure means something)."""
    probe = f"import urllib.request; print(urllib.request.urlopen('http://{METADATA_IP}/', timeout=2).status)"
    deadline = time.monotonic() + 20
    while True:
        try:
            out = engine.containers.run("orsbox/base", ["python3", "-c", probe], labels=TEST_LABELS,
                                        network=network, remove=True)
            assert out.decode().strip() == "200"
            return
        except docker.errors.ContainerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


CONNECT = """python3 -c '
import socket, sys
for address in sys.argv[1:]:
    try:
        socket.create_connection((address, 80), timeout=3)
        print(address, "connected")
    except OSError as exc:
        print(address, exc.strerror)' """


async def test_a_session_has_only_loopback_and_reaches_no_address(ors: Ors, metadata_server: str) -> None:
    sid = await ors.new_session()
    interfaces = await ors.bash(sid, "python3 -c 'import socket; print(*[name for _, name in socket.if_nameindex()])'; "
                                     "tail -n +2 /proc/net/route | wc -l")
    assert interfaces.text == "lo\n0\n"
    tries = await ors.bash(sid, f"{CONNECT} {metadata_server} {GATEWAY_IP} 127.0.0.1", timeout=20)
    unreachable = {"Network is unreachable", "No route to host"}  # runc says the first, gVisor the second
    metadata, gateway, loopback = tries.text.splitlines()
    assert metadata.removeprefix(f"{metadata_server} ") in unreachable
    assert gateway.removeprefix(f"{GATEWAY_IP} ") in unreachable
    assert loopback == "127.0.0.1 Connection refused"
    udp = await ors.bash(sid, "python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                              f"try: s.sendto(b\"x\", (\"{metadata_server}\", 53)); print(\"sent\")\n"
                              "except OSError as exc: print(exc.strerror)'")
    assert udp.text.strip() in unreachable
    await ors.delete(sid)
