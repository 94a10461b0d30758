"""The agent channel's wire contract, shared by the agent and the server.

Both sides import this module, so method names, error types and framing cannot
drift apart. Stdlib only, Python 3.8+: it runs inside environment images.

Frames are newline-delimited compact JSON objects:

    request   {"id": 7, "method": "call_tool", "params": {...}}
    response  {"id": 7, "result": ...}
    failure   {"id": 7, "error": {"type": "tool_failed", "message": "..."}}

Many requests may be in flight on one connection; responses carry the id of the
request they answer and may come back in any order.

Tunnels (an environment that drives openreward sandboxes): the agent forwards each TCP connection
made to its loopback port as frames of its own numbering, both ways, never answered:

    {"tunnel": 3, "open": true}       agent -> server: a new connection
    {"tunnel": 3, "data": "<base64>"}  either way: at most TUNNEL_PIECE bytes
    {"tunnel": 3, "close": true}       either way: that connection is over
"""

from __future__ import annotations

import json
from typing import Any, Dict

PROTOCOL_VERSION = 1

#: Largest frame the agent accepts from the server (bytes): tool input, task specs, a sandbox's command
#: (up to MAX_SANDBOX_CMD_BYTES, JSON-escaped). A longer line ends the connection: the server must not send one.
MAX_REQUEST_BYTES = 32 * 1024 * 1024

#: Sandbox mode: `serve --entrypoint sandbox` runs no Environment, only the sandbox methods below.
#: Real entrypoints are `module:Class`, so this name never is one.
SANDBOX_ENTRYPOINT = "sandbox"
#: Longest `cmd` of a `sandbox_run` (bytes, UTF-8).
MAX_SANDBOX_CMD_BYTES = 16 * 1024 * 1024


#: Tunnels: bytes of one `data` frame (before base64), and connections open at once per session.
TUNNEL_PIECE = 64 * 1024
MAX_TUNNELS = 32
#: The setup params' key that gives an environment the sandbox API: {"token": its API key}.
SESSION_API = "session_api"


def frame_limit(output_cap: int) -> int:
    """Largest answer frame for a session whose output cap is `output_cap` bytes: room for the capped
    output JSON-escaped (a control character is 6 bytes as \\uXXXX), the rest of the result, and a margin.
    The server drops an agent that sends a longer line; the agent refuses to send one."""
    return max(1024 * 1024, 8 * output_cap + 64 * 1024)


class Method:
    """The agent's methods."""

    HELLO = "hello"  # -> {"protocol", "python", "pid", "environment", "state"}
    SETUP = "setup"  # {"task", "secrets"} -> {}
    PROMPT = "prompt"  # -> [block, ...]
    TASK_TOOLS = "task_tools"  # -> {"tools": [...]}
    CALL_TOOL = "call_tool"  # {"name", "input"} -> {"ok": true, "output"} | {"ok": false, ...}
    TEARDOWN = "teardown"  # -> {}
    # /fork (runtime/forking.py). The source: export, read its chunks, done. Each copy: gather the chunks,
    # then setup with {"task", "secrets", "fork": {"state", "sha256"}} (restores instead of setting up).
    FORK_EXPORT = "fork_export"  # {"max_bytes"} -> {"state", "task", "size", "sha256"}
    FORK_READ = "fork_read"  # {"offset"} -> {"data": base64}
    FORK_DONE = "fork_done"  # -> {}
    FORK_GATHER = "fork_gather"  # {"data": base64, "max_bytes"} -> {"size"}
    # Sandbox mode only (see runtime/sandbox.py); setup takes {"task": {}, "secrets", "sandbox": {"env", "workdir"}}.
    SANDBOX_RUN = "sandbox_run"  # {"cmd", "timeout_s", "max_bytes", "shell"} -> {"output": base64, "return_code", ...}
    SANDBOX_STAT = "sandbox_stat"  # {"path", "sha256"} -> {"size", "sha256"?}
    SANDBOX_READ = "sandbox_read"  # {"path", "offset", "length"} -> {"data": base64, "file_size"}
    SANDBOX_WRITE = "sandbox_write"  # {"path", "offset", "data": base64, "mkdirs"} -> {"size"}
    SANDBOX_COMMIT = "sandbox_commit"  # {"path", "size"} -> {"sha256", "size"}
    # Both modes (see runtime/transfer.py): /workspace out as a tar or a file's bytes, and in.
    WORKSPACE_PACK = "workspace_pack"  # {"path", "file", "max_bytes"} -> {"handle", "chunk"}
    WORKSPACE_READ = "workspace_read"  # {"handle"} -> {"data": base64, "eof"}
    WORKSPACE_UNPACK = "workspace_unpack"  # {"path", "file", "max_bytes"} -> {"handle"}
    WORKSPACE_WRITE = "workspace_write"  # {"handle", "data": base64, "eof"} -> {"received"} | {"files", "bytes"}
    WORKSPACE_CLOSE = "workspace_close"  # {"handle"} -> {}


class ErrorType:
    """Error types an agent may report. The server maps each through a fixed table."""

    BAD_REQUEST = "bad_request"  # malformed frame or params; sandbox files: a symlink, directory, FIFO, device (400)
    UNKNOWN_METHOD = "unknown_method"
    NOT_SET_UP = "not_set_up"  # a session method before setup succeeded
    SETUP_FAILED = "setup_failed"  # the environment's constructor or setup() raised
    TOOL_FAILED = "tool_failed"  # the tool raised or returned something that is not a ToolOutput
    ENVIRONMENT_ERROR = "environment_error"  # prompt/task_tools/teardown raised
    INTERNAL = "internal"
    # The sandbox methods' file errors (the server answers with the HTTP status named):
    NOT_FOUND = "not_found"  # 404: no such file, or a path component is missing or not a directory
    FORBIDDEN = "forbidden"  # 403: the command user may not (permission denied, read-only file system)
    OUT_OF_RANGE = "out_of_range"  # 416: a read's offset is past the end of the file
    NO_SPACE = "no_space"  # 507: no space left on the file system, or over a quota or size limit
    IO_ERROR = "io_error"  # 500: any other error of the file system


class WireError(Exception):
    """An error that travels over the channel as `{"type", "message"}`."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message

    def to_json(self) -> Dict[str, str]:
        return {"type": self.type, "message": self.message}


def encode(frame: Dict[str, Any]) -> bytes:
    """One frame as a line of compact UTF-8 JSON."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Dict[str, Any]:
    """Parse one line into a frame; raises WireError on anything but a JSON object."""
    try:
        frame = json.loads(line)
    except RecursionError:
        raise WireError(ErrorType.BAD_REQUEST, "frame is nested too deeply") from None
    except ValueError as exc:
        raise WireError(ErrorType.BAD_REQUEST, "frame is not JSON: %s" % exc) from None
    if not isinstance(frame, dict):
        raise WireError(ErrorType.BAD_REQUEST, "frame is not a JSON object")
    return frame
