"""Pure pieces, without Docker: SSE chunking, output capture, policies, tool schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import pytest

from orsbox.agent.authoring import AuthoringError, Environment, ToolOutput, derive_input_schema, tool, validate_input
from orsbox.agent.commands import OutputCapture
from orsbox.errors import ConfigError
from orsbox.policy import PolicySet, SandboxPolicy, container_settings, parse_bytes
from orsbox.server.sse import split_for_sse


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
    assert settings["cap_drop"] == ["ALL"] and settings["cap_add"] == ["SETUID", "SETGID", "KILL"]
    assert settings["security_opt"] == ["no-new-privileges"] and settings["read_only"] is True
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
