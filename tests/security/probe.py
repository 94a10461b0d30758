"""What a session tries from inside its container, as one Python script (python3 of the image, 3.8+).

`probe_command(steps)` is a shell command that runs the steps concurrently and prints one JSON list of
results, one per step:

- `["get", url]`: urllib (which honours HTTP_PROXY): the status, or the error;
- `["connect", host, port]`: a raw CONNECT to the proxy in HTTPS_PROXY, then `GET /` through the tunnel:
  "200 <first line of the upstream's answer>", or the proxy's status and body;
- `["direct", host, port]`: a plain TCP connection, bypassing any proxy: "connected" or the error;
- `["resolve", name]`: getaddrinfo in the container: the addresses, or the error;
- `["dns", name]`: a raw DNS query to Docker's embedded server (127.0.0.11): the answer's rcode, or "no answer".
"""

from __future__ import annotations

import json
import shlex
from typing import Any

SCRIPT = r'''
import json, os, socket, struct, sys, urllib.error, urllib.parse, urllib.request
from concurrent.futures import ThreadPoolExecutor

def get(url):
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except Exception as exc:
        return "%s: %s" % (type(exc).__name__, exc)

def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data

def connect(host, port):
    proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
    sock = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
    sock.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
    head = read_head(sock)
    status = head.split(b" ", 2)[1].decode()
    if status != "200":
        rest = head + sock.recv(65536)
        return status + " " + rest.split(b"\r\n\r\n", 1)[1].decode().strip()
    sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    answer = read_head(sock)
    return "200 " + answer.split(b"\r\n", 1)[0].decode()

def direct(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "connected"
    except socket.timeout:
        return "timed out"
    except OSError as exc:
        return exc.strerror or str(exc)

def resolve(name):
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(name, 80)})
    except OSError as exc:
        return "%s: %s" % (type(exc).__name__, exc)

def dns(name):
    query = struct.pack(">HHHHHH", 0x0b0b, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        sock.sendto(query, ("127.0.0.11", 53))
        return sock.recv(512)[3] & 0x0F
    except socket.timeout:
        return "no answer"
    except OSError as exc:
        return exc.strerror or str(exc)

STEPS = {"get": get, "connect": connect, "direct": direct, "resolve": resolve, "dns": dns}
steps = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(steps)) as pool:
    results = list(pool.map(lambda step: STEPS[step[0]](*step[1:]), steps))
print(json.dumps(results))
'''


def probe_command(steps: list[list[Any]]) -> str:
    """A shell command running `steps` in the session (see the module docstring)."""
    return f"python3 -c {shlex.quote(SCRIPT)} {shlex.quote(json.dumps(steps))}"


def parse(text: str) -> list[Any]:
    return list(json.loads(text.strip().splitlines()[-1]))
