"""Benchmark orsbox against `docker exec` / `docker run` and the unsandboxed openreward reference server.

Everything is measured in the same run, on the same machine, through the same
HTTP client code for both ORS servers:

- orsbox (`orsbox serve`, every session in its own hardened container);
- a plain container from orsbox/bash:latest (`docker exec … true`, `docker run --rm … true`);
- the reference server `openreward.environments.Server` running the host-side twin of
  the bash environment (tests/support/reference_bash.py), unsandboxed.

Both ORS servers are driven by the tests' ORS client (tests/support/ors.py), so run it from the
repository root as a module, as ./scripts/bench does: `python -m scripts.bench`.

Prints a table and writes the raw samples to bench-results/<timestamp>.json.
Cleans up after itself, also on Ctrl-C or an error: both servers get SIGTERM
(orsbox removes its containers), the baseline container is removed, and no
container of this run's orsbox node may remain.

    ./scripts/bench --quick                        # smoke run
    ./scripts/bench --sessions 20 --calls 200 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from tests.support.ors import CallResult, Ors, UnexpectedAnswer

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RESULTS_DIR = ROOT / "bench-results"
STATE_DIR = Path("/tmp/orsbox-bench")
WARM_STATE_DIR = Path("/tmp/orsbox-bench-warm")
IMAGE = "orsbox/bash:latest"
ENV = "bash"
LOOPBACK = "127.0.0.1"
API_KEY = f"bench-{secrets.token_hex(16)}"  # the one client key this run's orsbox accepts
ADMIN_KEY = f"bench-admin-{secrets.token_hex(16)}"  # its operator key (/metrics)
BENCH_LABEL = "orsbox.bench"

START_TIMEOUT = 120.0  # s for a server to answer /health
STOP_TIMEOUT = 60.0  # s for a server to exit after SIGTERM (orsbox removes its containers first)
REQUEST_TIMEOUT = 60.0  # s for one request (a /delete waits for the container's removal, a 503 for 25 s)
CALL_TIMEOUT = 120.0  # s for a tool call, including the wait for setup (503s are retried within it)
DOCKER_TIMEOUT = 120.0  # s for one docker CLI command
WARMUP_CALLS = 5


# ---------------------------------------------------------------- statistics


def percentile(values: list[float], p: float) -> float | None:
    """Linear-interpolated percentile (p in 0..100) of `values`; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float]) -> dict[str, Any]:
    """Count and percentiles of durations in seconds, reported in milliseconds."""
    ms = [v * 1000.0 for v in values]
    return {
        "n": len(ms),
        "min_ms": min(ms) if ms else None,
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
        "mean_ms": sum(ms) / len(ms) if ms else None,
    }


# ---------------------------------------------------------------- the ORS calls


class BenchError(Exception):
    """A step that did not give the expected result."""


TRUE_CALL: dict[str, Any] = {"command": "true"}


def check_true(answer: CallResult) -> None:
    metadata = answer.output.get("metadata") or {}
    if metadata.get("exit_code") != 0:
        raise BenchError(f"`true` did not exit 0: {json.dumps(answer.result)[:300]}")


# ---------------------------------------------------------------- memory


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a process, from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def container_memory(container_id: str) -> dict[str, Any]:
    """Memory of one container: cgroup v1 files if readable, else `docker stats --no-stream`."""
    for base in (Path("/sys/fs/cgroup/memory/docker") / container_id,
                 Path("/sys/fs/cgroup/memory/system.slice") / f"docker-{container_id}.scope"):
        usage = base / "memory.usage_in_bytes"
        if usage.exists():
            stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
            return {"source": "cgroup v1", "usage_bytes": int(usage.read_text()),
                    "rss_bytes": int(stat.get("total_rss", stat.get("rss", 0))),
                    "cache_bytes": int(stat.get("total_cache", stat.get("cache", 0))),
                    "shmem_bytes": int(stat.get("total_shmem", stat.get("shmem", 0)))}
    for base in (Path("/sys/fs/cgroup/system.slice") / f"docker-{container_id}.scope",
                 Path("/sys/fs/cgroup/docker") / container_id):
        current = base / "memory.current"
        if current.exists():
            stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
            return {"source": "cgroup v2", "usage_bytes": int(current.read_text()),
                    "rss_bytes": int(stat.get("anon", 0)), "cache_bytes": int(stat.get("file", 0)),
                    "shmem_bytes": int(stat.get("shmem", 0))}
    out = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", container_id).stdout.strip()
    return {"source": "docker stats", "usage_bytes": parse_docker_size(out.split("/")[0]) if out else None,
            "rss_bytes": None, "cache_bytes": None, "shmem_bytes": None}


def parse_docker_size(text: str) -> int | None:
    units = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
    text = text.strip().lower()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            with contextlib.suppress(ValueError):
                return int(float(text[: -len(unit)]) * units[unit])
    return None


# ---------------------------------------------------------------- docker CLI


def docker(*args: str, check: bool = True, timeout: float = DOCKER_TIMEOUT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise BenchError(f"docker {' '.join(args[:3])}…: exit {result.returncode}: {result.stderr.strip()[:300]}")
    return result


def containers_with(*labels: str) -> list[str]:
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    return docker("ps", "-aq", "--no-trunc", *filters).stdout.split()


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    stop_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            # Own session: a Ctrl-C reaches the bench only, which then stops the server with SIGTERM.
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> float:
        """Seconds until GET /health answered 200."""
        assert self.proc is not None
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} at start; "
                                 f"log {self.log_path}:\n{tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not answer /health within {timeout:.0f} s; log {self.log_path}")

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL only if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.exit_code = self.proc.returncode
            return
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"warning: {self.name} did not exit {STOP_TIMEOUT:.0f} s after SIGTERM; killing it",
                  file=sys.stderr)
            self.proc.kill()
            self.exit_code = self.proc.wait()
        self.stop_seconds = time.monotonic() - started


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def orsbox_log_findings(path: Path) -> dict[str, Any]:
    """Warnings and errors orsbox logged (JSON lines), counted by event."""
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    other = 0
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            other += 1
            continue
        if isinstance(record, dict) and record.get("level") in ("warning", "error", "critical", "exception"):
            key = f"{record.get('level')}:{record.get('event')}"
            counts[key] += 1
            examples.setdefault(key, line[:400])
    return {"counts": dict(counts), "examples": examples, "non_json_lines": other}


# ---------------------------------------------------------------- measuring an ORS server


@dataclass
class Run:
    """What one ORS server measured; durations in seconds."""

    create_session: list[float] = field(default_factory=list)
    create_request: list[float] = field(default_factory=list)
    create_to_first: list[float] = field(default_factory=list)
    first_call_503_retries: list[int] = field(default_factory=list)
    delete: list[float] = field(default_factory=list)
    call_rtt: list[float] = field(default_factory=list)
    concurrent_total: float | None = None
    concurrent_each: list[float] = field(default_factory=list)
    concurrent_delete_total: float | None = None
    rss_idle: int | None = None
    rss_with_k: int | None = None
    rss_after: int | None = None
    containers: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def phase(run: Run, name: str, coro: Awaitable[None]) -> None:
    """Run one measurement; an error is recorded and the next phase still runs."""
    print(f"  {name} …", file=sys.stderr, flush=True)
    try:
        await coro
    except (BenchError, UnexpectedAnswer, aiohttp.ClientError, TimeoutError, json.JSONDecodeError, OSError) as exc:
        message = f"{name}: {type(exc).__name__}: {exc}"
        run.errors.append(message)
        print(f"  ! {message}", file=sys.stderr, flush=True)


async def measure_server(server: ServerProcess, sessions: int, calls: int, concurrency: int,
                         container_ids: Callable[[], list[str]] | None) -> Run:
    run = Run()
    assert server.proc is not None
    pid = server.proc.pid
    connector = aiohttp.TCPConnector(limit=max(32, 4 * concurrency))
    async with Ors.at(server.url, connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                      headers={"X-API-Key": API_KEY}) as ors:  # the reference ignores it
        live: set[str] = set()  # ids given to /create and not deleted yet
        run.rss_idle = rss_bytes(pid)

        async def call_true(sid: str) -> tuple[CallResult, int]:
            return await ors.call_when_ready(sid, "bash", TRUE_CALL, env=ENV, timeout=CALL_TIMEOUT)

        async def delete(sid: str) -> None:
            live.discard(sid)
            await ors.delete(sid)

        async def delete_all() -> None:
            """Delete every session still open, at once."""
            await asyncio.gather(*[delete(sid) for sid in list(live)])

        async def open_session() -> tuple[str, float]:
            """create_session → create → first `true`; the seconds from POST /create to the end event."""
            t0 = time.perf_counter()
            sid = await ors.create_session()
            t1 = time.perf_counter()
            live.add(sid)
            await ors.create(sid, ENV, split="train", index=0)
            t2 = time.perf_counter()
            answer, retries = await call_true(sid)
            t3 = time.perf_counter()
            check_true(answer)
            run.create_session.append(t1 - t0)
            run.create_request.append(t2 - t1)
            run.first_call_503_retries.append(retries)
            return sid, t3 - t1

        async def sequential() -> None:
            for _ in range(sessions):
                sid, seconds = await open_session()
                run.create_to_first.append(seconds)
                t0 = time.perf_counter()
                await delete(sid)
                run.delete.append(time.perf_counter() - t0)

        async def round_trips() -> None:
            sid, _ = await open_session()
            try:
                for _ in range(WARMUP_CALLS):
                    await call_true(sid)
                for _ in range(calls):
                    t0 = time.perf_counter()
                    answer, _ = await call_true(sid)
                    run.call_rtt.append(time.perf_counter() - t0)
                    check_true(answer)
            finally:
                await delete(sid)

        async def concurrent() -> None:
            t0 = time.perf_counter()
            outcomes = await asyncio.gather(*(open_session() for _ in range(concurrency)), return_exceptions=True)
            run.concurrent_total = time.perf_counter() - t0
            run.concurrent_each = [o[1] for o in outcomes if isinstance(o, tuple)]
            failures = [o for o in outcomes if isinstance(o, BaseException)]
            try:
                await asyncio.sleep(1.0)  # let the sessions settle before sampling memory
                run.rss_with_k = rss_bytes(pid)
                if container_ids is not None:
                    for cid in await asyncio.to_thread(container_ids):
                        memory = await asyncio.to_thread(container_memory, cid)
                        run.containers.append({"id": cid[:12], **memory})
            finally:
                t1 = time.perf_counter()
                await delete_all()
                run.concurrent_delete_total = time.perf_counter() - t1
            if failures:
                raise BenchError(f"{len(failures)} of {concurrency} concurrent sessions failed: {failures[0]!r}")

        await phase(run, f"{server.name}: {sessions} sessions, create → first result, delete", sequential())
        await phase(run, f"{server.name}: {calls} `bash true` calls in one session", round_trips())
        await phase(run, f"{server.name}: {concurrency} sessions at once", concurrent())
        if live:  # sessions a failed phase left open
            run.errors.append(f"{len(live)} session(s) left open by a failed phase; deleting them")
            await phase(run, f"{server.name}: deleting leftovers", delete_all())
        await asyncio.sleep(1.0)
        run.rss_after = rss_bytes(pid)
    return run


WARM_CREATES = 10  # sessions opened one after another on a warm pool, each once a container waits
STORM = 32  # sessions asked for at once on the cold server (no pool): sustained creates per second


async def measure_warm(server: ServerProcess) -> dict[str, Any]:
    """create → first result when the environment's warm pool has a container waiting (`pool_min = 8`),
    then a fork of 8 copies."""
    samples: list[float] = []
    async with Ors.at(server.url, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                      headers={"X-API-Key": API_KEY}) as ors:
        for _ in range(WARM_CREATES):
            await until_pool_ready(ors)
            sid = await ors.create_session()
            t0 = time.perf_counter()
            await ors.create(sid, ENV, split="train", index=0)
            answer, _ = await ors.call_when_ready(sid, "bash", TRUE_CALL, env=ENV, timeout=CALL_TIMEOUT)
            samples.append(time.perf_counter() - t0)
            check_true(answer)
            await ors.delete(sid)
        forked = await measure_fork(ors)
    return {"create_to_first": summary(samples), "fork": forked}


FORK_COPIES = 8
FORK_WORKSPACE_MB = 50


async def measure_fork(ors: Ors[aiohttp.ClientSession]) -> dict[str, Any]:
    """`POST /fork` of a session with a 50 MiB workspace into 8 copies, until each answered a `true` call."""
    source = await ors.create_session()
    await ors.create(source, ENV, split="train", index=0)
    prepared, _ = await ors.call_when_ready(source, "bash", {"command": (
        f"head -c {FORK_WORKSPACE_MB}M /dev/urandom > /workspace/state.bin")}, env=ENV, timeout=CALL_TIMEOUT)
    check_true(prepared)
    t0 = time.perf_counter()
    response = await ors.http.post("/fork", json={"count": FORK_COPIES}, headers={"X-Session-ID": source})
    if response.status != 200:
        raise BenchError(f"/fork: HTTP {response.status}: {await response.text()}")
    copies = (await response.json())["sids"]
    answered = time.perf_counter() - t0
    answers = await asyncio.gather(*(ors.call_when_ready(sid, "bash", TRUE_CALL, env=ENV, timeout=CALL_TIMEOUT)
                                     for sid in copies))
    ready = time.perf_counter() - t0
    for answer, _ in answers:
        check_true(answer)
    await asyncio.gather(*(ors.delete(sid) for sid in [source, *copies]))
    return {"copies": FORK_COPIES, "workspace_mb": FORK_WORKSPACE_MB, "answer_seconds": round(answered, 3),
            "all_ready_seconds": round(ready, 3)}


async def until_pool_ready(ors: Ors[aiohttp.ClientSession], timeout: float = 60.0) -> None:
    """Until `/metrics` shows a ready pool container of the bench environment."""
    wanted = f'orsbox_pool_containers{{environment="{ENV}",state="ready"}} '
    async with asyncio.timeout(timeout):
        while True:
            text = await (await ors.http.get("/metrics", headers={"X-API-Key": ADMIN_KEY})).text()
            if any(line.startswith(wanted) and float(line.split()[-1]) >= 1 for line in text.splitlines()):
                return
            await asyncio.sleep(0.05)


async def measure_storm(server: ServerProcess) -> dict[str, Any]:
    """`STORM` sessions created at once, each to its first result: sessions per second over the whole storm."""
    async with Ors.at(server.url, connector=aiohttp.TCPConnector(limit=4 * STORM),
                      timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT * 4),
                      headers={"X-API-Key": API_KEY}) as ors:
        async def one() -> str:
            sid = await ors.create_session()
            await ors.create(sid, ENV, split="train", index=0)
            answer, _ = await ors.call_when_ready(sid, "bash", TRUE_CALL, env=ENV, timeout=CALL_TIMEOUT * 4)
            check_true(answer)
            return sid

        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*(one() for _ in range(STORM)), return_exceptions=True)
        seconds = time.perf_counter() - t0
        sids = [o for o in outcomes if isinstance(o, str)]
        await asyncio.gather(*(ors.delete(sid) for sid in sids), return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise BenchError(f"{len(failures)} of {STORM} storm sessions failed: {failures[0]!r}")
    return {"sessions": STORM, "seconds": round(seconds, 3), "per_second": round(STORM / seconds, 2)}


def warm_pool_server(base_env: dict[str, str], node_id: str, logs: Path) -> ServerProcess:
    """A second orsbox (its own state dir and node id) whose bench environment keeps a warm pool of eight."""
    policies = logs / "warm-policies"
    policies.mkdir(exist_ok=True)
    for policy in (ROOT / "sandbox_policies").glob("*.toml"):
        shutil.copy(policy, policies / policy.name)
    (policies / f"{ENV}.toml").write_text(f"pool_min = {FORK_COPIES}\n")
    port = free_port()
    return ServerProcess(
        "orsbox-warm", [str(VENV_BIN / "orsbox"), "serve", "--host", LOOPBACK, "--port", str(port),
                        "--policies", str(policies)],
        {**base_env, "ORSBOX_STATE_DIR": str(WARM_STATE_DIR), "ORSBOX_NODE_ID": f"{node_id}-warm",
         "ORSBOX_API_KEYS": API_KEY, "ORSBOX_ADMIN_KEYS": ADMIN_KEY, "ORSBOX_POOL_MEMORY": str(16 * 1024**3)},
        port, logs / "orsbox-warm.log")


# ---------------------------------------------------------------- docker baseline


SANDBOX_CREATES = 8  # sandboxes opened one after another, for create → first run
SANDBOX_RUNS = 100  # `/run true` round trips on one sandbox
SANDBOX_FILE_BYTES = 32 * 1024 * 1024  # uploaded with upload_from, then fetched with download_to


async def measure_sandboxes(server: ServerProcess, work: Path) -> dict[str, Any]:
    """openreward's sandbox API on orsbox, through openreward's own client: create → first `run`,
    `run true` round trips, and upload/download throughput."""
    from openreward.api.sandboxes.client import AsyncSandboxesAPI
    from openreward.api.sandboxes.types import SandboxSettings

    settings = SandboxSettings(environment="bench", image=IMAGE, machine_size="1:1")
    creates: list[float] = []
    for _ in range(SANDBOX_CREATES):
        started = time.perf_counter()
        async with AsyncSandboxesAPI(base_url=server.url, api_key=API_KEY, settings=settings) as box:
            await box.check_run("true")
            creates.append(time.perf_counter() - started)
    async with AsyncSandboxesAPI(base_url=server.url, api_key=API_KEY, settings=settings) as box:
        for _ in range(WARMUP_CALLS):
            await box.check_run("true")
        runs = []
        for _ in range(SANDBOX_RUNS):
            started = time.perf_counter()
            await box.check_run("true")
            runs.append(time.perf_counter() - started)
        local = work / "sandbox-upload.bin"
        local.write_bytes(os.urandom(SANDBOX_FILE_BYTES))
        started = time.perf_counter()
        await box.upload_from(local, "/workspace/bench.bin")
        upload = time.perf_counter() - started
        started = time.perf_counter()
        await box.download_to("/workspace/bench.bin", work / "sandbox-download.bin")
        download = time.perf_counter() - started
        local.unlink()
        (work / "sandbox-download.bin").unlink()
    mb = SANDBOX_FILE_BYTES / 1e6
    return {"create_to_first_run": summary(creates), "run_rtt": summary(runs),
            "upload_mb_s": round(mb / upload, 1), "download_mb_s": round(mb / download, 1)}


@dataclass
class Baseline:
    exec_cli: list[float] = field(default_factory=list)
    exec_api: list[float] = field(default_factory=list)
    run_cli: list[float] = field(default_factory=list)
    container_memory: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def measure_baseline(sessions: int, calls: int, run_label: str) -> Baseline:
    """`docker exec <id> true` against a sleeping container, and `docker run --rm … true`."""
    baseline = Baseline()
    labels = ["--label", f"{BENCH_LABEL}=1", "--label", f"{BENCH_LABEL}.run={run_label}"]
    name = f"orsbox-bench-{run_label}"
    print("  docker exec / docker run baseline …", file=sys.stderr, flush=True)
    try:
        cid = docker("run", "-d", "--name", name, "--network", "none", *labels, IMAGE,
                     "sleep", "infinity").stdout.strip()
        for _ in range(WARMUP_CALLS):
            docker("exec", cid, "true")
        for _ in range(calls):
            t0 = time.perf_counter()
            docker("exec", cid, "true")
            baseline.exec_cli.append(time.perf_counter() - t0)
        baseline.exec_api = exec_via_api(cid, calls)
        baseline.container_memory = container_memory(cid)
        for _ in range(sessions):
            t0 = time.perf_counter()
            docker("run", "--rm", "--network", "none", *labels, IMAGE, "true")
            baseline.run_cli.append(time.perf_counter() - t0)
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        baseline.errors.append(f"baseline: {type(exc).__name__}: {exc}")
        print(f"  ! {baseline.errors[-1]}", file=sys.stderr, flush=True)
    finally:
        remove_bench_containers(run_label)
    return baseline


def exec_via_api(container_id: str, calls: int) -> list[float]:
    """`true` through the Engine API (docker-py: exec_create + exec_start), as a server would."""
    try:
        import docker as docker_py
    except ImportError:
        return []
    client = docker_py.from_env(timeout=int(DOCKER_TIMEOUT))
    try:
        samples = []
        for i in range(WARMUP_CALLS + calls):
            t0 = time.perf_counter()
            exec_id = client.api.exec_create(container_id, ["true"])["Id"]
            client.api.exec_start(exec_id)
            if i >= WARMUP_CALLS:
                samples.append(time.perf_counter() - t0)
        return samples
    finally:
        client.close()


def remove_bench_containers(run_label: str) -> None:
    with contextlib.suppress(BenchError, subprocess.TimeoutExpired, OSError):
        ids = containers_with(f"{BENCH_LABEL}.run={run_label}")
        if ids:
            docker("rm", "-f", *ids, check=False)


# ---------------------------------------------------------------- report


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def pair(stats: dict[str, Any], a: str, b: str) -> str:
    if not stats.get("n"):
        return "–"
    return f"{fmt_ms(stats[a])} / {fmt_ms(stats[b])}"


def mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 1024**2:.1f}"


def per_session(run: dict[str, Any], k: int) -> float | None:
    if run["rss_with_k"] is None or run["rss_idle"] is None or not k:
        return None
    return float(run["rss_with_k"] - run["rss_idle"]) / k


def render_table(results: dict[str, Any]) -> str:
    o, r, b = results["orsbox"], results["reference"], results["baseline"]
    k = results["config"]["concurrency"]
    containers = o["containers"]
    usage = [c["usage_bytes"] for c in containers if c.get("usage_bytes") is not None]
    rss = [c["rss_bytes"] for c in containers if c.get("rss_bytes") is not None]
    o_sum, r_sum, b_sum = o["summary"], r["summary"], b["summary"]
    rows = [
        ("create → first result, p50 / p90 (ms)", pair(o_sum["create_to_first"], "p50_ms", "p90_ms"),
         "run --rm true: " + pair(b_sum["run_cli"], "p50_ms", "p90_ms"),
         pair(r_sum["create_to_first"], "p50_ms", "p90_ms")),
        ("create → first result, warm pool, p50 / p90 (ms)",
         pair(results["warm"]["create_to_first"], "p50_ms", "p90_ms") if "create_to_first" in results.get(
             "warm", {}) else f"failed: {results.get('warm', {}).get('error', '?')[:60]}", "", ""),
        (f"fork into {FORK_COPIES} copies, {FORK_WORKSPACE_MB} MiB workspace: answer / all ready (ms)",
         (f"{fmt_ms(sec_ms(results['warm']['fork']['answer_seconds']))} / "
          f"{fmt_ms(sec_ms(results['warm']['fork']['all_ready_seconds']))}") if "fork" in results.get("warm", {})
         else "failed", "", ""),
        (f"storm of {STORM} creates, no pool: sessions ready / s",
         str(results["storm"]["per_second"]) if "per_second" in results.get("storm", {})
         else f"failed: {results.get('storm', {}).get('error', '?')[:60]}", "", ""),
        ("  of which POST /create answer, p50 (ms)", fmt_ms(o_sum["create_request"]["p50_ms"]), "",
         fmt_ms(r_sum["create_request"]["p50_ms"])),
        ("`bash true` round trip, p50 / p99 (ms)", pair(o_sum["call_rtt"], "p50_ms", "p99_ms"),
         "exec CLI: " + pair(b_sum["exec_cli"], "p50_ms", "p99_ms"), pair(r_sum["call_rtt"], "p50_ms", "p99_ms")),
        ("", "", "exec API: " + pair(b_sum["exec_api"], "p50_ms", "p99_ms"), ""),
        ("delete, p50 / p90 (ms)", pair(o_sum["delete"], "p50_ms", "p90_ms"), "",
         pair(r_sum["delete"], "p50_ms", "p90_ms")),
        (f"{k} sessions at once → all first results (ms)", fmt_ms(sec_ms(o["concurrent_total"])), "",
         fmt_ms(sec_ms(r["concurrent_total"]))),
        (f"  slowest / median of the {k} (ms)",
         f"{fmt_ms(o_sum['concurrent_each']['max_ms'])} / {fmt_ms(o_sum['concurrent_each']['p50_ms'])}", "",
         f"{fmt_ms(r_sum['concurrent_each']['max_ms'])} / {fmt_ms(r_sum['concurrent_each']['p50_ms'])}"),
        (f"  deleting the {k} at once (ms)", fmt_ms(sec_ms(o["concurrent_delete_total"])), "",
         fmt_ms(sec_ms(r["concurrent_delete_total"]))),
        ("server RSS idle / with K / after (MiB)",
         f"{mib(o['rss_idle'])} / {mib(o['rss_with_k'])} / {mib(o['rss_after'])}", "",
         f"{mib(r['rss_idle'])} / {mib(r['rss_with_k'])} / {mib(r['rss_after'])}"),
        ("server RSS per open session (MiB)", mib(per_session(o, k)), "", mib(per_session(r, k))),
        ("container memory per session, usage / rss (MiB)",
         f"{mib(avg(usage))} / {mib(avg(rss))}" if usage else "–",
         f"sleep: {mib(b['container_memory'].get('usage_bytes'))} / {mib(b['container_memory'].get('rss_bytes'))}",
         "(no container)"),
    ]
    box = results.get("sandbox") or {}
    if "run_rtt" in box:
        rows += [
            ("sandbox API: create → first `run`, p50 / p90 (ms)", pair(box["create_to_first_run"], "p50_ms", "p90_ms"),
             "run --rm true: " + pair(b_sum["run_cli"], "p50_ms", "p90_ms"), "(no sandbox API)"),
            ("sandbox API: `run true` round trip, p50 / p99 (ms)", pair(box["run_rtt"], "p50_ms", "p99_ms"),
             "exec API: " + pair(b_sum["exec_api"], "p50_ms", "p99_ms"), ""),
            ("sandbox API: upload_from / download_to 32 MB (MB/s)",
             f"{box['upload_mb_s']} / {box['download_mb_s']}", "", ""),
        ]
    elif box:
        rows.append(("sandbox API", f"failed: {box.get('error', '?')[:60]}", "", ""))
    headers = ("metric", "orsbox (container/session)", "docker exec / docker run", "reference (unsandboxed)")
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(4)]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), "-+-".join("-" * w for w in widths)]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def sec_ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def avg(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def run_to_json(run: Run) -> dict[str, Any]:
    data = {k: v for k, v in run.__dict__.items()}
    data["summary"] = {name: summary(getattr(run, name)) for name in
                       ("create_session", "create_request", "create_to_first", "delete", "call_rtt",
                        "concurrent_each")}
    return data


def baseline_to_json(baseline: Baseline) -> dict[str, Any]:
    data = {k: v for k, v in baseline.__dict__.items()}
    data["summary"] = {name: summary(getattr(baseline, name)) for name in ("exec_cli", "exec_api", "run_cli")}
    return data


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "kernel": platform.release(),
                            "cpus": os.cpu_count(), "host": platform.node()}
    with contextlib.suppress(BenchError, subprocess.TimeoutExpired, OSError):
        info["docker"] = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        info["docker_info"] = docker("info", "--format", "{{.CgroupVersion}} {{.CgroupDriver}} {{.Driver}}"
                                     ).stdout.strip()
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip()
    return info


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, help="sequential sessions for create/delete timings (default 20)")
    parser.add_argument("--calls", type=int, help="`bash true` calls for the round-trip timing (default 200)")
    parser.add_argument("--concurrency", type=int, help="sessions created at once (default 8)")
    parser.add_argument("--quick", action="store_true", help="small numbers for a smoke run (3 / 20 / 3)")
    parser.add_argument("--port", type=int, help="orsbox's port (default: a free one); the reference uses another")
    parser.add_argument("--reference-port", type=int, help="the reference server's port (default: a free one)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON results")
    args = parser.parse_args(argv)
    quick = {"sessions": 3, "calls": 20, "concurrency": 3}
    default = {"sessions": 20, "calls": 200, "concurrency": 8}
    for name in default:
        if getattr(args, name) is None:
            setattr(args, name, (quick if args.quick else default)[name])
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM interrupts the bench like Ctrl-C, so the same cleanup runs."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("docker") is None:
        print("error: the docker CLI is needed for the baseline", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_label = f"{stamp.lower()}-{secrets.token_hex(3)}"
    node_id = f"bench-{run_label}"  # this run's orsbox containers, and only them, carry orsbox.node=<node_id>
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / f"{stamp}-logs"
    logs.mkdir(exist_ok=True)

    orsbox_port = args.port or free_port()
    reference_port = args.reference_port or free_port()
    while reference_port == orsbox_port:
        reference_port = free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("ORSBOX_")}
    orsbox = ServerProcess(
        "orsbox", [str(VENV_BIN / "orsbox"), "serve", "--host", LOOPBACK, "--port", str(orsbox_port)],
        {**base_env, "ORSBOX_STATE_DIR": str(STATE_DIR), "ORSBOX_NODE_ID": node_id, "ORSBOX_API_KEYS": API_KEY},
        orsbox_port, logs / "orsbox.log")
    reference = ServerProcess(
        "reference", [sys.executable, "-m", "tests.support.reference_bash", "--port", str(reference_port)],
        {**base_env, "OPENREWARD_DISABLE_UPDATE_CHECK": "1", "PYTHONPATH": str(ROOT)},
        reference_port, logs / "reference.log")

    results: dict[str, Any] = {
        "timestamp": stamp,
        "config": {"sessions": args.sessions, "calls": args.calls, "concurrency": args.concurrency,
                   "task": {"split": "train", "index": 0}, "orsbox_port": orsbox_port,
                   "reference_port": reference_port, "orsbox_node_id": node_id, "state_dir": str(STATE_DIR)},
        "machine": machine_info(),
    }
    managed_before = containers_with("orsbox.managed")
    status = 0
    interrupted = False
    try:
        with terminate_on_sigterm():
            print(f"starting orsbox on {orsbox.url} and the reference on {reference.url} (logs in {logs})",
                  file=sys.stderr, flush=True)
            orsbox.start()
            reference.start()
            results["startup_seconds"] = {"orsbox": orsbox.wait_healthy(), "reference": reference.wait_healthy()}

            def my_session_containers() -> list[str]:
                return containers_with(f"orsbox.node={node_id}", "orsbox.role=session")

            print("measuring orsbox", file=sys.stderr, flush=True)
            results["orsbox"] = run_to_json(asyncio.run(measure_server(
                orsbox, args.sessions, args.calls, args.concurrency, my_session_containers)))
            results["orsbox"]["containers_left_after_deletes"] = len(my_session_containers())
            print(f"measuring orsbox: a storm of {STORM} creates", file=sys.stderr, flush=True)
            try:
                results["storm"] = asyncio.run(measure_storm(orsbox))
            except Exception as exc:  # one phase failing must not lose the others' figures
                results["storm"] = {"error": f"{type(exc).__name__}: {exc}"}
            print("measuring orsbox with a warm pool", file=sys.stderr, flush=True)
            warm = warm_pool_server(base_env, node_id, logs)
            try:
                warm.start()
                warm.wait_healthy()
                results["warm"] = asyncio.run(measure_warm(warm))
            except Exception as exc:
                results["warm"] = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                warm.stop()
            print("measuring orsbox's sandbox API", file=sys.stderr, flush=True)
            try:
                results["sandbox"] = asyncio.run(measure_sandboxes(orsbox, logs))
            except Exception as exc:  # one phase failing must not lose the others' figures
                results["sandbox"] = {"error": f"{type(exc).__name__}: {exc}"}
            print("measuring the reference server", file=sys.stderr, flush=True)
            results["reference"] = run_to_json(asyncio.run(measure_server(
                reference, args.sessions, args.calls, args.concurrency, None)))
            print("measuring docker", file=sys.stderr, flush=True)
            results["baseline"] = baseline_to_json(measure_baseline(args.sessions, args.calls, run_label))
    except KeyboardInterrupt:
        interrupted = True
        status = 130
        print("\ninterrupted: cleaning up", file=sys.stderr, flush=True)
    except BenchError as exc:
        status = 1
        print(f"error: {exc}", file=sys.stderr, flush=True)
    finally:
        results["cleanup"] = cleanup(orsbox, reference, run_label, node_id, managed_before)
        results["orsbox_log"] = orsbox_log_findings(orsbox.log_path)
    if results["cleanup"]["problems"]:
        status = status or 1

    path = args.out / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if not interrupted and all(key in results for key in ("orsbox", "reference", "baseline")):
        print()
        print(render_table(results))
        print()
        errors = [*results["orsbox"]["errors"], *results["reference"]["errors"], *results["baseline"]["errors"]]
        for message in errors:
            print(f"error during the run: {message}")
        if errors:
            status = status or 1
    findings = results["orsbox_log"]["counts"]
    if findings:
        print("orsbox logged: " + ", ".join(f"{k} ×{v}" for k, v in sorted(findings.items())))
    for note in results["cleanup"]["notes"]:
        print(f"note: {note}")
    for problem in results["cleanup"]["problems"]:
        print(f"cleanup problem: {problem}")
    print(f"results: {path}")
    return status


def cleanup(orsbox: ServerProcess, reference: ServerProcess, run_label: str, node_id: str,
            managed_before: list[str]) -> dict[str, Any]:
    """Stop both servers (SIGTERM), remove the baseline container, check no container of this run is left.

    Runs with SIGINT/SIGTERM ignored, so a second Ctrl-C cannot cut it short.
    """
    problems: list[str] = []
    notes: list[str] = []
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for server in (orsbox, reference):
            try:
                server.stop()
            except OSError as exc:
                problems.append(f"{server.name} could not be stopped: {exc}")
        remove_bench_containers(run_label)
        try:
            leftover = [*containers_with(f"orsbox.node={node_id}"), *containers_with(f"orsbox.node={node_id}-warm")]
            if leftover:
                problems.append(f"{len(leftover)} container(s) of this orsbox run remained after it exited "
                                f"(removed now): {[c[:12] for c in leftover]}")
                docker("rm", "-f", *leftover, check=False)
            if containers_with(f"{BENCH_LABEL}.run={run_label}"):
                problems.append("the baseline container could not be removed")
            managed_now = containers_with("orsbox.managed")
            if managed_now:
                notes.append(f"{len(managed_now)} orsbox.managed container(s) exist that are not this run's "
                             f"(another orsbox on this engine?), left alone: {[c[:12] for c in managed_now]}")
        except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
            problems.append(f"could not list containers: {exc}")
            managed_now = []
        return {
            "orsbox_exit_code": orsbox.exit_code, "orsbox_stop_seconds": orsbox.stop_seconds,
            "reference_exit_code": reference.exit_code, "reference_stop_seconds": reference.stop_seconds,
            "managed_containers_before": len(managed_before), "managed_containers_after": len(managed_now),
            "problems": problems, "notes": notes,
        }
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
