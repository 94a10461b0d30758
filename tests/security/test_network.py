"""Network "none": a session has only loopback, and no address answers, not even one that is up next door.

The metadata server fixture (tests/security/conftest.py) runs an HTTP server at 169.254.169.254 on an
internal Docker network of its own, and shows that a container on that network does reach it; a session cannot.
"""

from __future__ import annotations

import pytest

from ..support.ors import Ors
from .conftest import METADATA_GATEWAY, NetServer

pytestmark = pytest.mark.docker

CONNECT = """python3 -c '
import socket, sys
for address in sys.argv[1:]:
    try:
        socket.create_connection((address, 80), timeout=3)
        print(address, "connected")
    except OSError as exc:
        print(address, exc.strerror)' """


async def test_a_session_has_only_loopback_and_reaches_no_address(ors: Ors, metadata_server: NetServer) -> None:
    sid = await ors.new_session()
    interfaces = await ors.bash(sid, "python3 -c 'import socket; print(*[name for _, name in socket.if_nameindex()])'; "
                                     "tail -n +2 /proc/net/route | wc -l")
    assert interfaces.text == "lo\n0\n"
    tries = await ors.bash(sid, f"{CONNECT} {metadata_server.ip} {METADATA_GATEWAY} 127.0.0.1", timeout=20)
    unreachable = {"Network is unreachable", "No route to host"}  # runc says the first, gVisor the second
    metadata, gateway, loopback = tries.text.splitlines()
    assert metadata.removeprefix(f"{metadata_server.ip} ") in unreachable
    assert gateway.removeprefix(f"{METADATA_GATEWAY} ") in unreachable
    assert loopback == "127.0.0.1 Connection refused"
    udp = await ors.bash(sid, "python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                              f"try: s.sendto(b\"x\", (\"{metadata_server.ip}\", 53)); print(\"sent\")\n"
                              "except OSError as exc: print(exc.strerror)'")
    assert udp.text.strip() in unreachable
    await ors.delete(sid)
