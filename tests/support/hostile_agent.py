"""A compromised agent: it speaks the channel protocol until the first tool call, then breaks it.

`python hostile_agent.py MODE --socket PATH`, started by the fake backend for entrypoints `hostile:MODE`.
Like the real agent, it dials in to the server's socket at PATH.
It answers `hello` and `setup` as a real agent does (so the session becomes ready), then answers
`call_tool` (and `prompt`) the hostile way MODE names:

    garbage      a line that is not JSON
    unsolicited  an answer to a request the server never sent
    oversized    one 10 MiB line
    flood        bytes without end and without a newline, as fast as the socket takes them
    deep         JSON nested 100,000 deep
    bad_error    an error frame whose error is not {type, message}
    no_id        a frame without a request id
    wrong_types  prompt answered with a number, call_tool with a list (well-formed frames, wrong answers)

and, for an environment given the sandbox API (tunnel frames, see orsbox/agent/wire.py):

    tunnel_number  a tunnel frame whose number is not one
    tunnel_kind    a tunnel frame that is neither open, data nor close
    tunnel_twice   the same tunnel opened twice
    tunnel_base64  data that is not base64
    tunnel_big     data of more than a piece (64 KiB)
    tunnel_many    40 tunnels opened: answers the call with the numbers the server closed at once
    tunnel_http    one HTTP request through a tunnel, with the key setup gave it, for the call's
                   `path`, `sid` and `key` ("" means its own): answers the call with the status line

and for workspace transfers:

    workspace_endless  a workspace download that never ends (512 KiB chunks, never eof)
    workspace_garbage  a workspace download opened without a handle; chunks that are not base64
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import time
from typing import Any

FLOOD_LIMIT = 1024**3  # bytes a flood sends at most, whatever happens
DIAL_INTERVAL = 0.05  # s between dials while the server does not listen


def answer(conn: socket.socket, frame: dict[str, Any]) -> None:
    conn.sendall(json.dumps(frame).encode() + b"\n")


def text_result(conn: socket.socket, request_id: int, text: str) -> None:
    output = {"blocks": [{"type": "text", "text": text, "detail": None}], "reward": None, "finished": False,
              "metadata": None}
    answer(conn, {"id": request_id, "result": {"ok": True, "output": output}})


def tunnel_frames(lines: Any, until: Any) -> list[dict[str, Any]]:
    """Frames read until `until(frames)` holds (tunnel frames from the server)."""
    frames: list[dict[str, Any]] = []
    while not until(frames):
        frames.append(json.loads(next(lines)))
    return frames


def tunnel(conn: socket.socket, lines: Any, mode: str, request: dict[str, Any], token: str) -> None:
    request_id = request["id"]
    if mode == "tunnel_number":
        answer(conn, {"tunnel": "x", "open": True})
    elif mode == "tunnel_kind":
        answer(conn, {"tunnel": 1})
    elif mode == "tunnel_twice":
        answer(conn, {"tunnel": 1, "open": True})
        answer(conn, {"tunnel": 1, "open": True})
    elif mode == "tunnel_base64":
        answer(conn, {"tunnel": 1, "open": True})
        answer(conn, {"tunnel": 1, "data": "!!not base64!!"})
    elif mode == "tunnel_big":
        answer(conn, {"tunnel": 1, "open": True})
        answer(conn, {"tunnel": 1, "data": base64.b64encode(b"x" * 100_000).decode()})
    elif mode == "tunnel_many":
        for number in range(1, 41):
            answer(conn, {"tunnel": number, "open": True})
        frames = tunnel_frames(lines, lambda frames: len(frames) >= 8)
        text_result(conn, request_id, ",".join(str(f["tunnel"]) for f in frames if f.get("close")))
    elif mode == "tunnel_http":
        given = request["params"]["input"]
        head = (f"POST {given['path']} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"X-Session-ID: {given['sid']}\r\nX-API-Key: {given['key'] or token}\r\n"
                "Content-Length: 2\r\n\r\n{}")
        answer(conn, {"tunnel": 7, "open": True})
        answer(conn, {"tunnel": 7, "data": base64.b64encode(head.encode()).decode()})
        received = b""
        while b"\r\n" not in received:
            frame = json.loads(next(lines))
            received += base64.b64decode(frame.get("data", ""))
        answer(conn, {"tunnel": 7, "close": True})
        text_result(conn, request_id, received.split(b"\r\n")[0].decode())


def misbehave(conn: socket.socket, mode: str, request: dict[str, Any]) -> None:
    request_id = request["id"]
    if mode == "garbage":
        conn.sendall(b"this is not json\n")
    elif mode == "unsolicited":
        answer(conn, {"id": request_id + 1000, "result": {"ok": True}})
    elif mode == "oversized":
        conn.sendall(b'{"id": %d, "result": "' % request_id + b"x" * (10 * 1024**2) + b'"}\n')
    elif mode == "flood":
        chunk, sent = b"x" * 65536, 0
        while sent < FLOOD_LIMIT:
            conn.sendall(chunk)
            sent += len(chunk)
    elif mode == "deep":
        conn.sendall(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    elif mode == "bad_error":
        answer(conn, {"id": request_id, "error": "no structure"})
    elif mode == "no_id":
        answer(conn, {"result": {"ok": True}})
    elif mode == "workspace_endless":
        method = request["method"]
        result: Any = {"handle": "h1", "chunk": 524288} if method == "workspace_pack" else {}
        if method == "workspace_read":
            result = {"data": base64.b64encode(b"x" * 524288).decode(), "eof": False}
        answer(conn, {"id": request_id, "result": result})
    elif mode == "workspace_garbage":
        method = request["method"]
        if method == "workspace_pack":
            answer(conn, {"id": request_id, "result": {"handle": 5 if request["params"].get("file") else "h2"}})
        else:
            answer(conn, {"id": request_id, "result": {"data": "*** not base64 ***", "eof": False}})
    elif mode == "wrong_types":
        answer(conn, {"id": request_id, "result": 5 if request["method"] == "prompt" else [1, 2]})


def dial(path: str) -> socket.socket:
    while True:
        conn = socket.socket(socket.AF_UNIX)
        try:
            conn.connect(path)
            return conn
        except OSError:
            conn.close()
            time.sleep(DIAL_INTERVAL)


def serve(mode: str, path: str) -> None:
    conn = dial(path)
    token = ""
    with conn, conn.makefile("rb") as lines:
        for line in lines:
            request = json.loads(line)
            method = request.get("method")
            if method == "hello":
                answer(conn, {"id": request["id"], "result": {
                    "protocol": 1, "state": "new", "pid": os.getpid(), "python": "3", "environment": "hostile"}})
            elif method in ("setup", "teardown"):
                token = (request["params"].get("session_api") or {}).get("token", token)
                answer(conn, {"id": request["id"], "result": {}})
            elif "tunnel" in request:
                continue
            else:
                try:
                    if mode.startswith("tunnel_"):
                        tunnel(conn, lines, mode, request, token)
                    else:
                        misbehave(conn, mode, request)
                except OSError:  # the server dropped us
                    return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("--socket", required=True)
    args = parser.parse_args()
    serve(args.mode, args.socket)


if __name__ == "__main__":
    main()
