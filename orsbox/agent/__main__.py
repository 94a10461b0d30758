"""The agent's entry point: `python3 -m orsbox.agent serve|describe --entrypoint module:Class`.

`serve` dials in to the server on the session's Unix socket (the server listens, the
agent connects, and connects again whenever it has no connection) until SIGTERM.
`describe` prints the environment's discovery data as JSON on stdout and exits;
the server runs it once per image in a locked-down container.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import List, Optional

from .layout import SOCKET_DIR, SOCKET_NAME
from .runtime import capabilities
from .runtime.processes import RUNNER, CommandLimits
from .runtime.procfs import make_non_dumpable
from .runtime.service import Agent, describe, load_environment_class, serve


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m orsbox.agent")
    parser.add_argument("mode", choices=["serve", "describe"])
    parser.add_argument("--entrypoint", required=True, help="module:Class of the Environment")
    parser.add_argument("--socket", default=os.path.join(SOCKET_DIR, SOCKET_NAME), help="the server's socket to dial")
    parser.add_argument("--limits", default="{}", help="JSON object of CommandLimits fields (uid, gid, home, ...)")
    return parser.parse_args(argv)


def run_describe(entrypoint: str) -> int:
    try:
        data = describe(load_environment_class(entrypoint))
    except Exception as exc:
        print(json.dumps({"error": "%s: %s" % (type(exc).__name__, exc)}))
        return 1
    sys.stdout.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    make_non_dumpable()  # no ptrace or /proc/<pid>/mem access by the command user
    capabilities.confine()  # first, before any thread or child: it keeps SETUID, SETGID, KILL; all it starts, none
    RUNNER.configure(CommandLimits(**json.loads(args.limits)))
    if args.mode == "describe":
        return run_describe(args.entrypoint)
    asyncio.run(run_serve(args.entrypoint, args.socket))
    return 0


async def run_serve(entrypoint: str, socket: str) -> None:
    """The agent is made in the running loop: on Python 3.8 an asyncio.Lock binds to the loop current when
    it is made, and one made before asyncio.run() would bind to a stray loop (left unclosed at exit)."""
    agent = Agent(entrypoint)
    agent.preload()
    await serve(agent, socket)


if __name__ == "__main__":
    sys.exit(main())
