"""Pure pieces, without Docker: SSE chunking, output capture, policies, tool schemas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import pytest
from pydantic import BaseModel, Field

from orsbox.agent import layout
from orsbox.agent.authoring import AuthoringError, Environment, ToolOutput, tool
from orsbox.agent.authoring.tools import derive_input_schema, validate_input
from orsbox.agent.runtime.processes import CommandLimits, OutputCapture
from orsbox.api.sse import split_for_sse
from orsbox.backends.docker.settings import container_settings, runtime_check, runtime_problem, seccomp_profile
from orsbox.errors import ConfigError
from orsbox.policy import PolicySet, SandboxPolicy, explain, parse_bytes


@pytest.mark.parametrize("text", [
    "a" * 10000,
    "x" * 4095 + " " + "y" * 5000,
    "x" * 4096 + " " * 3 + "y" * 100,
    ("ab " * 3000),
    "é€😀" * 5000,
    "x" * 4000 + "\u2028" * 200 + "z",
    "q" + " " * 9000 + "q",
    "",
])
def test_sse_chunks_reassemble_and_survive_lstrip(text: str) -> None:
    payload = json.dumps({"text": text}, ensure_ascii=False, separators=(",", ":"))
    parts = split_for_sse(payload)
    assert all(len(part) <= 4096 for part in parts)
    assert all(not part[:1].isspace() and not part[-1:].isspace() for part in parts)
    assert json.loads("".join(part.lstrip() for part in parts)) == {"text": text}


def test_output_capture_keeps_head_and_tail_within_the_cap() -> None:
    capture = OutputCapture(1000)
    capture.feed(b"H" * 300)
    for _ in range(1000):
        capture.feed(b"m" * 1000)
    capture.feed(b"T" * 400)
    text = capture.text()
    assert capture.truncated and capture.total == 300 + 1_000_000 + 400
    assert text.startswith("H" * 300 + "m" * 200) and text.endswith("m" * 100 + "T" * 400)
    assert len(capture.head) + len(capture.tail) <= 3 * 1000


def test_output_capture_never_splits_a_character() -> None:
    capture = OutputCapture(11)
    capture.feed("ééééééééééééé".encode())
    assert "\ufffd" not in capture.text()


def test_policy_maps_to_the_hardened_container() -> None:
    settings = container_settings(SandboxPolicy())
    assert settings["cap_drop"] == ["ALL"] and settings["cap_add"] == ["SETUID", "SETGID", "KILL", "SETPCAP"]
    assert settings["security_opt"] == ["no-new-privileges", f"seccomp={seccomp_profile()}"]
    assert settings["read_only"] is True and settings["runtime"] == "runc" and settings["shm_size"] == 64 * 1024**2
    assert settings["network_mode"] == "none" and settings["init"] is True
    assert settings["mem_limit"] == settings["memswap_limit"] == 1024**3
    assert settings["pids_limit"] == 256 and settings["nano_cpus"] == 1_000_000_000
    assert "noexec" in settings["tmpfs"]["/tmp"] and "uid=1000" in settings["tmpfs"]["/workspace"]
    assert "noexec" not in container_settings(SandboxPolicy(tmp_exec=True))["tmpfs"]["/tmp"]
    assert ",exec," in settings["tmpfs"]["/workspace"]


@pytest.mark.parametrize("text,expected", [("512m", 512 * 1024**2), ("1g", 1024**3), ("64KiB", 65536), (100, 100)])
def test_sizes_read_like_docker(text: Any, expected: int) -> None:
    assert parse_bytes(text) == expected


def test_policy_files_resolve_and_bad_ones_name_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "default.toml").write_text('memory = "2g"\npids = 100\n')
    (tmp_path / "bash.toml").write_text("pids = 50\n")
    policies = PolicySet.load(tmp_path)
    assert policies.resolve("bash").pids == 50 and policies.resolve("bash").memory == 2 * 1024**3
    assert policies.resolve("other").pids == 100
    (tmp_path / "broken.toml").write_text('pids = "many"\nmystery = 1\n')
    with pytest.raises(ConfigError) as caught:
        PolicySet.load(tmp_path)
    assert "broken.toml" in caught.value.detail and "pids" in caught.value.detail
    assert "mystery" in caught.value.detail


def test_the_seccomp_profile_is_dockers_default_without_io_uring() -> None:
    profile = json.loads(seccomp_profile())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    names = {name for rule in profile["syscalls"] for name in rule["names"]}
    assert not {name for name in names if name.startswith("io_uring")}
    assert {"read", "clone", "clone3", "openat2", "faccessat2", "close_range", "ptrace"} <= names
    [clone3] = [rule for rule in profile["syscalls"] if rule["names"] == ["clone3"]]
    assert clone3["errnoRet"] == 38  # ENOSYS, so that glibc falls back to clone


def test_explain_says_where_each_value_comes_from(tmp_path: Path) -> None:
    (tmp_path / "default.toml").write_text('memory = "2g"\npids = 100\n')
    (tmp_path / "strict.toml").write_text("pids = 50\n")
    rows = {name: (value, source) for name, value, source in explain(PolicySet.load(tmp_path), "bash", "strict")}
    assert rows["pids"] == (50, str(tmp_path / "strict.toml"))
    assert rows["memory"] == (2 * 1024**3, str(tmp_path / "default.toml"))
    assert rows["cpus"] == (1.0, "built-in")
    assert {name for name, _, _ in explain(PolicySet.load(tmp_path), "bash")} == set(SandboxPolicy.model_fields)


def test_full_disks_must_leave_memory_to_run() -> None:
    with pytest.raises(ValueError, match="must leave at least 64m of memory"):
        SandboxPolicy(memory="512m")
    assert SandboxPolicy(memory="512m", workspace_size="64m").memory == 512 * 1024**2


def test_runsc_needs_orsbox_runtime_registered_with_its_arguments() -> None:
    gvisor = SandboxPolicy(runtime="runsc")
    assert container_settings(gvisor)["runtime"] == "orsbox-runsc"
    assert runtime_problem(SandboxPolicy(), {"runc": []}) is None
    missing = runtime_problem(gvisor, {"runc": []})
    assert missing and "lacks" in missing and "daemon.json" in missing and "--host-uds=open" in missing
    bare = runtime_problem(gvisor, {"orsbox-runsc": ["--platform=ptrace"]})
    assert bare and "without --network=none" in bare
    assert runtime_problem(gvisor, {"orsbox-runsc": ["--network=none", "--host-uds=all"]}) is None
    assert runtime_problem(gvisor, {"orsbox-runsc": ["--network=none", "--host-uds=open"]}) is None
    creating = runtime_problem(gvisor, {"orsbox-runsc": ["--network=none", "--host-uds=create"]})
    assert creating and "without --host-uds=open or --host-uds=all" in creating  # the agent dials in: it must open


def test_start_up_refuses_policies_the_engine_cannot_run(tmp_path: Path) -> None:
    (tmp_path / "bash.toml").write_text('runtime = "runsc"\n')
    policies = PolicySet.load(tmp_path)
    with pytest.raises(ConfigError, match=r"bash\.toml: runtime 'runsc' needs the Docker runtime 'orsbox-runsc'"):
        policies.require_runtimes(runtime_check({"runc": []}))
    policies.require_runtimes(runtime_check({"runc": [], "orsbox-runsc": ["--network=none", "--host-uds=open"]}))


def orsbox(*args: str, engine: str) -> subprocess.CompletedProcess[str]:
    """The orsbox command, run as ops would (`engine`: DOCKER_HOST)."""
    return subprocess.run([sys.executable, "-m", "orsbox.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DOCKER_HOST": engine})


def test_policy_check_names_file_field_and_what_is_allowed(tmp_path: Path) -> None:
    no_engine = f"unix://{tmp_path}/no-engine.sock"
    (tmp_path / "bash.toml").write_text('runtime = "kata"\ncpu = 2\n')
    bad = orsbox("policy", "check", "--policies", str(tmp_path), engine=no_engine)
    assert bad.returncode == 1
    assert f"{tmp_path / 'bash.toml'}: field runtime: Input should be 'runc' or 'runsc'" in bad.stderr
    assert "field cpu: unknown field (allowed fields: cpus, memory," in bad.stderr
    (tmp_path / "bash.toml").write_text("cpus = 2\n")
    good = orsbox("policy", "check", "--policies", str(tmp_path), engine=no_engine)
    assert good.returncode == 0, good.stderr
    assert "ok: the policies in" in good.stdout
    assert "runtimes not checked: the Docker engine does not answer" in good.stdout


def test_policy_explain_works_from_files_when_the_engine_is_away(tmp_path: Path) -> None:
    (tmp_path / "bash.toml").write_text("pids = 64\n")
    explained = orsbox("policy", "explain", "bash", "--policies", str(tmp_path),
                       engine=f"unix://{tmp_path}/no-engine.sock")
    assert explained.returncode == 0, explained.stderr
    out = explained.stdout
    assert "the Docker engine does not answer" in out and "explaining from the policy files only" in out
    assert f"pids              64       {tmp_path / 'bash.toml'}" in out
    settings = json.loads(out[out.index("{"):out.index("\n}\n") + 2])
    assert settings["pids_limit"] == 64 and settings["security_opt"][1].startswith("seccomp=<content of ")
    assert '"default_timeout": 120.0' in out


def test_the_shipped_policies_are_valid() -> None:
    PolicySet.load(Path(__file__).resolve().parent.parent / "sandbox_policies").resolve("bash")


class Demo(Environment):
    @tool
    def plain(self, name: str, count: int = 1, ratio: Optional[float] = None, tags: list[str] | None = None,  # noqa: UP045
              note: Annotated[str, "a note"] = "") -> ToolOutput:
        """A tool."""
        return ToolOutput([])

    @tool
    def bare(self) -> ToolOutput:
        return ToolOutput([])


def test_schemas_are_derived_from_type_hints() -> None:
    schema = derive_input_schema(Demo.plain, "plain")
    assert schema is not None
    assert schema["required"] == ["name"] and schema["additionalProperties"] is False
    assert schema["properties"]["count"] == {"type": "integer", "title": "Count", "default": 1}
    assert schema["properties"]["ratio"]["anyOf"] == [{"type": "number"}, {"type": "null"}]
    assert schema["properties"]["note"]["description"] == "a note"
    assert derive_input_schema(Demo.bare, "bare") == {
        "additionalProperties": False, "properties": {}, "title": "BareInput", "type": "object"}
    assert validate_input({"name": "x", "tags": ["a"]}, schema) == []
    assert validate_input({}, schema) == ["name: field required"]
    assert validate_input({"name": 1, "count": True}, schema) == [
        "name: expected string, got integer", "count: expected integer, got boolean"]
    assert validate_input({"name": "x", "tags": [1]}, schema) == ["tags[0]: expected string, got integer"]


def test_untyped_tool_parameters_are_an_authoring_error() -> None:
    class Bad(Environment):
        @tool
        def oops(self, thing) -> ToolOutput:  # type: ignore[no-untyped-def]
            return ToolOutput([])

    with pytest.raises(AuthoringError, match="'thing' has no type hint"):
        Bad.tool_specs()


def test_readme_policy_reference_matches_the_model() -> None:
    from orsbox.policy import reference_markdown

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert reference_markdown() in readme, "regenerate README's policy table from orsbox.policy.reference_markdown()"


def test_policies_are_data_that_imports_no_backend() -> None:
    code = ("import sys, orsbox.policy\n"
            "print(sorted(m for m in sys.modules if m.startswith(('orsbox.backends', 'docker'))))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert found == "[]"


def test_the_agent_takes_every_limit_the_policy_gives_it() -> None:
    limits = CommandLimits(**SandboxPolicy(command_uid=1234).agent_limits())
    assert (limits.uid, limits.gid, limits.home) == (1234, 1234, layout.COMMAND_HOME)


class AnswerInput(BaseModel):
    answer: int = Field(description="the sum")


def test_tools_written_the_openreward_way_take_a_pydantic_model() -> None:
    import asyncio

    class Ported(Environment):
        @tool
        async def submit(self, params: AnswerInput) -> ToolOutput:
            """Submit."""
            return ToolOutput([], reward=float(params.answer == 4), finished=True)

    [spec] = Ported.tool_specs()
    assert spec.input_schema == AnswerInput.model_json_schema()
    env = Ported({"id": "t"})
    bad = asyncio.run(env.call_tool("submit", {"answer": "four"}))
    assert bad["ok"] is False and bad["reason"] == "input_validation" and "int_parsing" in bad["error"]
    good = asyncio.run(env.call_tool("submit", {"answer": 4}))
    assert good["ok"] is True and good["output"]["reward"] == 1.0


def test_index_only_task_sets_are_described_but_not_listable() -> None:
    from orsbox.agent.runtime.service import describe

    class Large(Environment):
        @classmethod
        def list_splits(cls) -> list[str]:
            return ["test"]

        @classmethod
        def num_tasks(cls, split: str) -> int:
            return 3

        @classmethod
        def get_task(cls, split: str, index: int) -> dict[str, Any]:
            return {"id": f"{split}-{index}"}

    data = describe(Large)
    assert data["tasks"] == {"test": [{"id": "test-0"}, {"id": "test-1"}, {"id": "test-2"}]}
    assert data["listable"] == {"test": False}


def test_explicit_schemas_must_be_objects() -> None:
    class BadSchema(Environment):
        @tool(input_schema={"type": "string"})
        def oops(self, text: str) -> ToolOutput:
            return ToolOutput([])

    with pytest.raises(AuthoringError, match="must be a JSON Schema object"):
        BadSchema.tool_specs()
