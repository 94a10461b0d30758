"""`orsbox ps|inspect|rm|logs|events|top|cp`: Docker's commands, over a running server's admin API.

They talk to `--url` (env ORSBOX_URL; default the configured host and port) with an operator key,
`--key` or ORSBOX_ADMIN_KEY. Plain HTTP through urllib: nothing here needs the event loop.
`orsbox events -f` follows the SSE stream and, if the connection drops, reconnects with the last
id it printed as Last-Event-ID, so it shows every event once. `orsbox cp SESSION:PATH DEST` and
`orsbox cp SRC SESSION:PATH` copy files and folders out of and into a session's /workspace.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

URL_ENV, KEY_ENV = "ORSBOX_URL", "ORSBOX_ADMIN_KEY"
TIMEOUT = 30.0  # s per request (a followed stream gets keepalives every few seconds)
RECONNECT_PAUSE = 1.0  # s before `events -f` reconnects


class AdminError(Exception):
    """What the server (or its absence) said, for one line on stderr."""


def add_commands(commands: Any) -> None:
    """The admin subcommands, on `orsbox`'s subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the server (env {URL_ENV}; default http://<host>:<port> of the config)")
    common.add_argument("--key", help=f"an operator key (env {KEY_ENV})")
    ps = commands.add_parser("ps", parents=[common], help="live sessions, every owner's (admin API)")
    ps.add_argument("--env", help="only this environment's")
    ps.add_argument("--state", choices=["starting", "ready", "failed"], help="only sessions in this state")
    ps.add_argument("--owner", help="only this owner's (owner digest prefix, or the API key's id)")
    ps.add_argument("--min-age", type=float, help="only sessions older than this many seconds")
    ps.add_argument("-q", "--quiet", action="store_true", help="only their ids")
    inspect = commands.add_parser("inspect", parents=[common], help="a session's details and live figures, as JSON")
    inspect.add_argument("sessions", nargs="+", metavar="SESSION")
    rm = commands.add_parser("rm", parents=[common], help="end sessions (their clients get 410 with the reason)")
    rm.add_argument("sessions", nargs="+", metavar="SESSION")
    rm.add_argument("--reason", default="", help="told to the session's client")
    logs = commands.add_parser("logs", parents=[common], help="the last lines a session's container wrote")
    logs.add_argument("session", metavar="SESSION")
    logs.add_argument("--tail", type=int, default=200, help="lines (default 200)")
    events = commands.add_parser("events", parents=[common], help="session events (one session's, or all)")
    events.add_argument("session", nargs="?", metavar="SESSION", help="default: every session's")
    events.add_argument("-f", "--follow", action="store_true", help="keep following new events (Ctrl-C ends)")
    events.add_argument("--since", type=int, help="only events after this id")
    events.add_argument("--json", action="store_true", help="one JSON object a line")
    commands.add_parser("top", parents=[common], help="live CPU, memory and pids of every session's container")
    cp = commands.add_parser("cp", parents=[common], help="copy files or folders out of or into a session's "
                             "/workspace: SESSION:PATH DEST, or SRC SESSION:PATH (DEST - : a tar on stdout)")
    cp.add_argument("source")
    cp.add_argument("destination")


def run(args: argparse.Namespace, default_url: str, out: TextIO = sys.stdout) -> int:
    client = Client(args.url or os.environ.get(URL_ENV) or default_url, args.key or os.environ.get(KEY_ENV) or "")
    try:
        if args.command == "ps":
            return ps(client, args, out)
        if args.command == "inspect":
            print(json.dumps([client.json(f"/admin/sessions/{_quote(sid)}") for sid in args.sessions], indent=2),
                  file=out)
            return 0
        if args.command == "rm":
            for sid in args.sessions:
                client.json(f"/admin/sessions/{_quote(sid)}/end", body={"reason": args.reason})
                print(sid, file=out)
            return 0
        if args.command == "logs":
            out.write(client.text(f"/admin/sessions/{_quote(args.session)}/logs?tail={args.tail}"))
            return 0
        if args.command == "events":
            return events(client, args, out)
        if args.command == "cp":
            return copy(client, args.source, args.destination, out)
        return top(client, out)
    except AdminError as exc:
        print(f"orsbox {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class Client:
    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self.key = key

    def _open(self, path: str, *, body: Any = None, headers: dict[str, str] | None = None,
              timeout: float = TIMEOUT) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET",
                                         headers={"X-API-Key": self.key, "Content-Type": "application/json",
                                                  **(headers or {})})
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise AdminError(f"HTTP {exc.code}: {_detail(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"no orsbox answers at {self.url} ({reason}); is `orsbox serve` running? "
                             f"(--url or {URL_ENV})") from None

    def json(self, path: str, *, body: Any = None) -> Any:
        with self._open(path, body=body) as response:
            return json.loads(response.read())

    def download(self, path: str, into: Any) -> None:
        with self._open(path) as response:
            shutil.copyfileobj(response, into, 1024 * 1024)

    def upload(self, path: str, data: bytes) -> Any:
        request = urllib.request.Request(self.url + path, data=data, method="PUT",
                                         headers={"X-API-Key": self.key, "Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AdminError(f"HTTP {exc.code}: {_detail(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise AdminError(f"no orsbox answers at {self.url} ({getattr(exc, 'reason', exc)})") from None

    def text(self, path: str) -> str:
        with self._open(path) as response:
            return str(response.read().decode(errors="replace"))

    def stream(self, path: str, last_id: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) of an SSE answer, until it ends."""
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        with self._open(path, headers=headers) as response:
            event, data = "", list[str]()
            for raw in response:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if not line:
                    if event and data:
                        yield event, json.loads("\n".join(data))
                    event, data = "", []
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])


def ps(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    query = {name: value for name, value in (("env", args.env), ("state", args.state), ("owner", args.owner),
                                             ("min_age", args.min_age)) if value is not None}
    sessions = client.json("/admin/sessions" + (f"?{urllib.parse.urlencode(query)}" if query else ""))["sessions"]
    if args.quiet:
        for session in sessions:
            print(session["id"], file=out)
        return 0
    rows = [["SESSION", "ENV", "KIND", "STATE", "KEY", "TASK", "AGE", "IDLE", "CALLS", "CONTAINER"]]
    now = time.time()
    for s in sessions:
        rows.append([s["id"], s["env"], s["kind"], s["state"], s["key"] or "-", s["task_id"] or "-",
                     duration(s["age"]), duration(max(0.0, now - s["last_used"])), str(s["calls"]),
                     s["container"] or "-"])
    table(rows, out)
    return 0


def top(client: Client, out: TextIO) -> int:
    rows = [["SESSION", "ENV", "STATE", "CPU", "MEMORY", "LIMIT", "MEM %", "PIDS", "CALLS"]]
    for s in client.json("/admin/sessions")["sessions"]:
        try:
            details = client.json(f"/admin/sessions/{_quote(s['id'])}")
        except AdminError:  # it ended meanwhile
            continue
        stats = details["stats"] or {}
        memory, limit = stats.get("memory_bytes"), stats.get("memory_limit")
        share = f"{100 * memory / limit:.1f}%" if memory is not None and limit else "-"
        cpu = stats.get("cpu_seconds")
        pids = f"{stats.get('pids')}/{stats.get('pids_limit') or '-'}" if stats.get("pids") is not None else "-"
        rows.append([s["id"], s["env"], s["state"], f"{cpu:.2f}s" if cpu is not None else "-", size(memory),
                     size(limit), share, pids, str(details["calls"])])
    table(rows, out)
    return 0


def events(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    path = f"/admin/sessions/{_quote(args.session)}/events" if args.session else "/admin/events"
    if not args.follow:
        path += "?follow=0"
    last_id = str(args.since) if args.since is not None else None
    while True:
        try:
            for event, data in client.stream(path, last_id):
                print(json.dumps(data) if args.json else event_line(event, data), file=out, flush=True)
                last_id = data.get("cursor", last_id)  # what a reconnect resumes after
            return 0  # the stream ended: the session did, or nothing more was asked for
        except (AdminError, OSError, ValueError) as exc:
            if not args.follow or (isinstance(exc, AdminError) and "HTTP 4" in str(exc)):
                raise AdminError(str(exc)) from None
            print(f"orsbox events: {exc}; reconnecting after event {last_id}", file=sys.stderr)
            time.sleep(RECONNECT_PAUSE)


def copy(client: Client, source: str, destination: str, out: TextIO) -> int:
    """`docker cp` for /workspace: out of a session (a file as itself, a folder as a folder, `-` a tar on
    stdout), or into one (a file as a file, a folder as a tar unpacked at PATH)."""
    if ":" in source and not Path(source).exists():
        sid, _, path = source.partition(":")
        base = f"/admin/sessions/{_quote(sid)}/workspace?path={urllib.parse.quote(path)}"
        if destination == "-":
            client.download(base, sys.stdout.buffer)
            return 0
        target = Path(destination)
        name = target / Path(path).name if target.is_dir() else target
        partial = name.with_name(f".{name.name}.orsbox-cp")
        try:  # a file first (into a temporary name, renamed once whole); a folder answers 400
            with open(partial, "wb") as file:
                client.download(base + "&file=1", file)
            partial.replace(name)
            print(f"{source} -> {name}", file=out)
            return 0
        except AdminError as exc:
            partial.unlink(missing_ok=True)
            if "HTTP 400" not in str(exc):
                raise
        buffer = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
        client.download(base, buffer)
        folder = target / Path(path.rstrip("/")).name if target.is_dir() and path.strip("/.") else target
        folder.mkdir(parents=True, exist_ok=True)
        buffer.seek(0)
        with buffer, tarfile.open(fileobj=buffer) as tar:
            tar.extractall(folder, filter=_safe_member)
        print(f"{source} -> {folder}/", file=out)
        return 0
    if ":" not in destination:
        raise AdminError("one side must be SESSION:PATH")
    sid, _, path = destination.partition(":")
    base = f"/admin/sessions/{_quote(sid)}/workspace?path={urllib.parse.quote(path)}"
    local = Path(source)
    if local.is_dir():
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode="w") as tar:
            for item in sorted(local.rglob("*")):
                if not item.is_symlink() and (item.is_file() or item.is_dir()):
                    tar.add(item, arcname=str(item.relative_to(local)), recursive=False)
        written = client.upload(base, packed.getvalue())
    else:
        written = client.upload(base + "&file=1", local.read_bytes())
    print(f"{source} -> {destination} ({written['files']} file(s), {written['bytes']} bytes)", file=out)
    return 0


def _safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's `data` filter (what came from a container: nothing outside DEST, no devices, no set-id bits);
    a member it refuses (a symlink to an absolute path) is skipped, and said so on stderr."""
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError as exc:
        print(f"orsbox cp: skipped {member.name}: {exc}", file=sys.stderr)
        return None


def event_line(event: str, data: dict[str, Any]) -> str:
    """`TIME  #ID  SESSION  EVENT  key=value ...` (as `docker events` prints)."""
    if event == "lost":
        lost = data.get("data", {})
        count = lost.get("count")
        return f"{'':24}  #{data.get('id')!s:<5} {'-':36}  {'lost':13}  {count if count is not None else 'some'} " \
               "events were pushed out of the ring before this reader got them"
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(data["time"])) + f".{int(data['time'] % 1 * 1000):03d}Z"
    fields = " ".join(f"{name}={value}" for name, value in data["data"].items() if value is not None)
    return f"{when}  #{data['id']:<5} {data['session_id']:36}  {data['event']:13}  {fields}".rstrip()


def table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def size(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _quote(sid: str) -> str:
    return urllib.parse.quote(sid, safe="")


def _detail(raw: bytes) -> str:
    try:
        detail = json.loads(raw).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail if detail is not None else raw.decode(errors="replace")[:300])
