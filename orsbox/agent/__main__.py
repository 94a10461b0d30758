"""The agent's entry point: `python3 -m orsbox.agent serve|describe --entrypoint module:Class`.

`serve` listens on the session's Unix socket until the container is removed.
`describe` prints the environment's discovery data as JSON on stdout and exits;
the server runs it once per image in a locked-down container.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import signal
import sys
from typing import List, Optional

from . import wire
from .commands import CommandLimits, configure
from .service import Agent, describe, load_environment_class, log

PR_SET_DUMPABLE = 4


def make_non_dumpable() -> None:
    """No core dumps, and no ptrace or /proc/<pid>/mem access by the command user."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m orsbox.agent")
    parser.add_argument("mode", choices=["serve", "describe"])
    parser.add_argument("--entrypoint", required=True, help="module:Class of the Environment")
    parser.add_argument("--socket", default=os.path.join(wire.SOCKET_DIR_IN_CONTAINER, wire.SOCKET_NAME))
    parser.add_argument("--limits", default="{}", help="JSON object of CommandLimits fields")
    return parser.parse_args(argv)


def run_describe(entrypoint: str) -> int:
    try:
        data = describe(load_environment_class(entrypoint))
    except Exception as exc:
        print(json.dumps({"error": "%s: %s" % (type(exc).__name__, exc)}))
        return 1
    sys.stdout.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
    return 0


async def serve(agent: Agent, path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(agent.serve_connection, path=path, limit=wire.MAX_FRAME_BYTES)
    finally:
        os.umask(old_umask)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    log("listening", socket=path, pid=os.getpid())
    await stop
    server.close()
    await agent.teardown({})


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    make_non_dumpable()
    configure(CommandLimits(**json.loads(args.limits)))
    if args.mode == "describe":
        return run_describe(args.entrypoint)
    asyncio.run(serve(Agent(args.entrypoint), args.socket))
    return 0


if __name__ == "__main__":
    sys.exit(main())
