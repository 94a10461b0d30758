"""What the agent enforces on commands, seen through the bash tool: time, output, processes."""

from __future__ import annotations

import pytest

from .support.ors import Ors

pytestmark = pytest.mark.docker


async def test_a_command_past_its_timeout_is_killed_with_partial_output(ors: Ors) -> None:
    sid = await ors.new_session()
    slow = await ors.bash(sid, "echo started; trap '' TERM; sleep 60 & sleep 30; echo never", timeout=1)
    meta = slow.output["metadata"]
    assert meta["timed_out"] is True and meta["exit_code"] == -9
    assert slow.text == "started\n"
    left = await ors.bash(sid, "ps -eo user,args | grep '[s]leep' || echo none")
    assert left.text == "none\n"
    await ors.delete(sid)


async def test_output_over_the_cap_keeps_head_and_tail(ors: Ors) -> None:
    sid = await ors.new_session()
    flood = await ors.bash(sid, "echo FIRST; head -c 5000000 /dev/zero | tr '\\0' a; echo; echo LAST")
    meta = flood.output["metadata"]
    assert meta["truncated"] is True and meta["exit_code"] == 0 and meta["timed_out"] is False
    assert flood.text.startswith("FIRST\naaa") and flood.text.endswith("aaa\nLAST\n")
    assert "bytes of output truncated" in flood.text
    assert len(flood.text.encode()) <= 256 * 1024 + 100
    await ors.delete(sid)


async def test_exit_codes_and_stderr_are_reported(ors: Ors) -> None:
    sid = await ors.new_session()
    failing = await ors.bash(sid, "echo out; echo err >&2; exit 3")
    assert failing.output["metadata"] == {"exit_code": 3, "timed_out": False, "truncated": False}
    assert failing.text == "out\nerr\n"
    await ors.delete(sid)


async def test_commands_run_unprivileged_in_the_workspace(ors: Ors) -> None:
    sid = await ors.new_session()
    who = await ors.bash(sid, "id; pwd; echo $HOME; touch /workspace/ok && echo writable; "
                              "cp /bin/true /tmp/t && /tmp/t || echo tmp-noexec; "
                              "cp /bin/true /workspace/t && /workspace/t && echo workspace-exec")
    assert "uid=1000(user) gid=1000(user) groups=1000(user)" in who.text
    assert "/workspace\n/home/user\nwritable\n" in who.text
    assert "tmp-noexec" in who.text and "workspace-exec" in who.text
    await ors.delete(sid)


async def test_a_fork_bomb_is_contained_and_the_session_recovers(ors: Ors) -> None:
    sid = await ors.new_session()
    bomb = await ors.bash(sid, "bomb() { bomb | bomb & }; bomb; sleep 10", timeout=3)
    assert bomb.status == 200 and bomb.result["ok"] is True and bomb.output["metadata"]["timed_out"] is True
    after = await ors.bash(sid, "echo recovered; ps -e --no-headers | wc -l")
    assert after.text.startswith("recovered\n")
    assert int(after.text.split()[1]) < 10
    await ors.delete(sid)


async def test_commands_are_killed_first_when_memory_runs_out(ors: Ors) -> None:
    sid = await ors.new_session()
    probe = await ors.bash(sid, "cat /proc/self/oom_score_adj; echo $BASH_ENV; x=é€😀; echo ${#x}; locale | head -1")
    assert probe.text.splitlines()[:3] == ["1000", "", "3"]
    await ors.delete(sid)
