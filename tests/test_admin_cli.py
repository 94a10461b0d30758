"""`orsbox ps|inspect|rm|logs|events|top` against a live server process on the real engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from .support.run import ADMIN_KEY, AUTH, NODE_ID, ROOT
from .support.server import OrsboxProcess

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def live_server(state_dir: Path, images: None, engine: docker.DockerClient,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = OrsboxProcess(state_dir=state_dir, node_id=NODE_ID,
                           log_path=tmp_path_factory.mktemp("admin-cli") / "server.log").start()
    try:
        yield server.url
    finally:
        server.stop()


def orsbox(url: str, *args: str, key: str = ADMIN_KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORSBOX_URL": url, "ORSBOX_ADMIN_KEY": key, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "orsbox.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def new_session(url: str) -> str:
    sid = str(uuid.uuid4())
    created = httpx.post(f"{url}/create", json={"env_name": "bash", "split": "train", "index": 0},
                         headers={**AUTH, "X-Session-ID": sid}, timeout=30)
    assert created.status_code == 200
    called = httpx.post(f"{url}/bash/call", json={"name": "bash", "input": {"command": "echo hello"}},
                        headers={**AUTH, "X-Session-ID": sid}, timeout=60)
    assert "hello" in called.text
    return sid


def test_ps_inspect_top_logs_events_and_rm(live_server: str) -> None:
    sid = new_session(live_server)
    ps = orsbox(live_server, "ps")
    assert ps.returncode == 0, ps.stderr
    header, *rows = ps.stdout.splitlines()
    assert header.split()[:5] == ["SESSION", "ENV", "KIND", "STATE", "KEY"]
    (row,) = [line for line in rows if line.startswith(sid)]
    assert row.split()[1:6] == ["bash", "ors", "ready", "env-1", "train-0"] and row.split()[8] == "1"
    assert orsbox(live_server, "ps", "-q", "--owner", "env-1").stdout.split() == [sid]
    assert orsbox(live_server, "ps", "-q", "--env", "python").stdout.split() == []

    details = json.loads(orsbox(live_server, "inspect", sid).stdout)[0]
    assert details["id"] == sid and details["stats"]["memory_limit"] > 0 and details["calls"] == 1

    top = orsbox(live_server, "top").stdout.splitlines()
    assert top[0].split()[:4] == ["SESSION", "ENV", "STATE", "CPU"]
    (line,) = [line for line in top if line.startswith(sid)]
    assert "MiB" in line and "/256" in line

    assert orsbox(live_server, "logs", sid, "--tail", "5").returncode == 0

    events = orsbox(live_server, "events", sid)
    assert events.returncode == 0, events.stderr
    kinds = [line.split()[3] for line in events.stdout.splitlines()]
    assert kinds == ["created", "ready", "call_started", "call_finished"]
    assert "tool=bash" in events.stdout and "echo hello" not in events.stdout

    follower = subprocess.Popen([sys.executable, "-m", "orsbox.cli", "events", "-f", sid, "--json"],
                                env={**os.environ, "ORSBOX_URL": live_server, "ORSBOX_ADMIN_KEY": ADMIN_KEY,
                                     "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert follower.stdout is not None
    first = [json.loads(follower.stdout.readline()) for _ in range(4)]  # the replay: it is connected
    rm = orsbox(live_server, "rm", sid, "--reason", "done here")
    assert rm.returncode == 0 and rm.stdout.split() == [sid]
    rest = [json.loads(line) for line in follower.stdout]  # it ends when the session does
    assert follower.wait(timeout=30) == 0
    followed = first + rest
    assert [e["event"] for e in followed] == [*kinds, "ended"]
    assert followed[-1]["data"]["reason"] == "ended by the operator: done here"
    assert [e["id"] for e in followed] == sorted({e["id"] for e in followed})

    gone = httpx.post(f"{live_server}/ping", headers={**AUTH, "X-Session-ID": sid}, timeout=30)
    assert gone.status_code == 410 and "done here" in gone.json()["detail"]
    again = orsbox(live_server, "rm", sid)
    assert again.returncode == 1 and "HTTP 404" in again.stderr


def test_client_keys_and_no_server_are_refused_clearly(live_server: str) -> None:
    refused = orsbox(live_server, "ps", key=AUTH["X-API-Key"])
    assert refused.returncode == 1 and "HTTP 403" in refused.stderr and "operator key" in refused.stderr
    nobody = orsbox("http://127.0.0.1:9", "ps")
    assert nobody.returncode == 1 and "no orsbox answers at http://127.0.0.1:9" in nobody.stderr


def test_cp_copies_files_and_folders_out_and_in(live_server: str, tmp_path: Path) -> None:
    sid = new_session(live_server)
    try:
        made = httpx.post(f"{live_server}/bash/call", headers={**AUTH, "X-Session-ID": sid}, timeout=60,
                          json={"name": "bash", "input": {"command": "mkdir -p out/sub && echo a > out/a.txt && "
                                                                      "echo b > out/sub/b.txt && ln -s /etc out/etc"}})
        assert made.status_code == 200
        copied = orsbox(live_server, "cp", f"{sid}:out", str(tmp_path))
        assert copied.returncode == 0, copied.stderr
        assert (tmp_path / "out" / "a.txt").read_text() == "a\n" and (tmp_path / "out/sub/b.txt").read_text() == "b\n"
        assert not os.path.lexists(tmp_path / "out" / "etc") and "skipped ./etc" in copied.stderr
        one = orsbox(live_server, "cp", f"{sid}:out/a.txt", str(tmp_path / "single.txt"))
        assert one.returncode == 0 and (tmp_path / "single.txt").read_text() == "a\n"
        missing = orsbox(live_server, "cp", f"{sid}:nothing", str(tmp_path / "never.txt"))
        assert missing.returncode == 1 and "HTTP 404" in missing.stderr and not (tmp_path / "never.txt").exists()

        local = tmp_path / "up"
        (local / "deep").mkdir(parents=True)
        (local / "deep" / "c.txt").write_text("c")
        (local / "d.txt").write_text("d")
        assert orsbox(live_server, "cp", str(local), f"{sid}:in").returncode == 0
        assert orsbox(live_server, "cp", str(local / "d.txt"), f"{sid}:solo.txt").returncode == 0
        check = httpx.post(f"{live_server}/bash/call", headers={**AUTH, "X-Session-ID": sid}, timeout=60,
                           json={"name": "bash", "input": {"command": "cat in/deep/c.txt in/d.txt solo.txt"}})
        assert "cdd" in check.text
    finally:
        httpx.post(f"{live_server}/delete", headers={**AUTH, "X-Session-ID": sid}, timeout=30)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    answer = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    assert answer.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def test_metrics_of_a_live_server_move_on_create_and_end(live_server: str) -> None:
    created = ("orsbox_sessions_created_total", (("environment", "bash"), ("kind", "ors")))
    ended = ("orsbox_sessions_ended_total", (("environment", "bash"), ("reason", "operator")))
    ready = ("orsbox_sessions", (("environment", "bash"), ("state", "ready")))
    before = scrape(live_server)
    sid = new_session(live_server)
    during = scrape(live_server)
    assert during[created] == before.get(created, 0) + 1 and during[ready] == before.get(ready, 0) + 1
    assert orsbox(live_server, "rm", sid).returncode == 0
    after = scrape(live_server)
    assert after[ended] == before.get(ended, 0) + 1 and after.get(ready, 0) == before.get(ready, 0)
    assert httpx.get(f"{live_server}/metrics", headers=AUTH, timeout=30).status_code == 403
