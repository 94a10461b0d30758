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
    with conn, conn.makefile("rb") as lines:
        for line in lines:
            request = json.loads(line)
            method = request.get("method")
            if method == "hello":
                answer(conn, {"id": request["id"], "result": {
                    "protocol": 1, "state": "new", "pid": os.getpid(), "python": "3", "environment": "hostile"}})
            elif method in ("setup", "teardown"):
                answer(conn, {"id": request["id"], "result": {}})
            else:
                try:
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
