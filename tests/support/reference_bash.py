"""A host-side twin of the `bash` environment, written against the `openreward` authoring API.

It has the splits, tasks, tool names, tool docstrings and input schemas of
`images/bash/bash_env.py`, but runs commands on the host with asyncio
subprocesses, in a per-session temporary folder, under the reference server
`openreward.environments.Server`. It is what orsbox is compared with: by
`scripts/bench` (latency of the unsandboxed reference) and by differential
conformance tests (same requests, same answers).

It also serves `images/orwdemo`'s environment, which is written against openreward's API and
needs no twin: the reference runs the very class orsbox serves through its adapter.

It is NOT a sandbox: commands run as the current user on the host. Send it
harmless commands only, and bind it to loopback (the helpers below do).

    python -m tests.support.reference_bash --port 18080     # from the repo root

Differences from the orsbox environment, on purpose: the working folder is a
temporary folder instead of /workspace (task files are written there with the
/workspace prefix dropped), and `submit` does not grade (reward 0.0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import inspect
import os
import random
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")  # before openreward is imported

from openreward.environments import Environment, Server, TextBlock, ToolOutput, tool
from pydantic import BaseModel, ConfigDict

from orsbox.agent.runtime.processes import OutputCapture  # the same truncation as orsbox's agent
from orsbox.agent.toolsets import ShellTools

ROOT = Path(__file__).resolve().parents[2]
BASH_ENV_PATH = ROOT / "images" / "bash" / "bash_env.py"
ENV_NAME = "bash"

DEFAULT_TIMEOUT = 120.0  # s, as the default policy's call_timeout
MAX_TIMEOUT = 600.0  # s, as the default policy's max_call_timeout
OUTPUT_CAP = 256 * 1024  # bytes of combined output kept per call (head + tail), as the default policy
DRAIN_TIMEOUT = 5.0  # s to wait for the output pipe once the command is killed


def load_bash_env() -> ModuleType:
    """`images/bash/bash_env.py` as a module (it imports `orsbox.agent`, which is installed on the host)."""
    spec = importlib.util.spec_from_file_location("orsbox_bash_env", BASH_ENV_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {BASH_ENV_PATH}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BASH_ENV = load_bash_env()
TASKS: dict[str, list[dict[str, str]]] = _BASH_ENV.TASKS
BUILDERS: Mapping[str, Callable[[random.Random], tuple[dict[str, str], object]]] = _BASH_ENV.BUILDERS


# ---------------------------------------------------------------- running commands


class BashInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str
    timeout: float | None = None


class RestartShellInput(BaseModel):
    # No fields and no docstring, like SubmitInput.
    model_config = ConfigDict(extra="forbid")


class SubmitInput(BaseModel):
    # No fields and no docstring: its schema is the one orsbox derives for a tool without parameters.
    model_config = ConfigDict(extra="forbid")


async def run_command(command: str, cwd: Path, timeout: float | None) -> tuple[str, dict[str, Any]]:
    """Run `command` with bash in `cwd`; output and metadata {exit_code, timed_out, truncated}."""
    limit = DEFAULT_TIMEOUT if timeout is None else max(0.0, min(float(timeout), MAX_TIMEOUT))
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PWD": str(cwd),
    }
    proc = await asyncio.create_subprocess_exec(
        "/bin/bash", "-c", command,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=str(cwd), env=env, start_new_session=True,
    )
    capture = OutputCapture(OUTPUT_CAP)

    async def pump() -> None:
        assert proc.stdout is not None
        while data := await proc.stdout.read(65536):
            capture.feed(data)

    reader = asyncio.ensure_future(pump())
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout=limit)
    except TimeoutError:
        timed_out = True
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the command and everything it started
        await proc.wait()
    try:
        await asyncio.wait_for(reader, timeout=DRAIN_TIMEOUT)
    except TimeoutError:
        reader.cancel()
    metadata = {"exit_code": proc.returncode, "timed_out": timed_out, "truncated": capture.truncated}
    return capture.text(), metadata


# ---------------------------------------------------------------- the environment


class BashTwin(Environment):  # type: ignore[misc]
    """Shell tasks in a per-session temporary folder on the host (unsandboxed)."""

    @classmethod
    def name(cls) -> str:
        return ENV_NAME

    @classmethod
    def list_splits(cls) -> list[str]:
        return list(TASKS)

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, str]]:
        return TASKS[split]

    def __init__(self, task_spec: dict[str, Any], secrets: dict[str, str] | None = None) -> None:
        super().__init__(task_spec, secrets or {})
        if task_spec.get("id") not in BUILDERS:
            raise ValueError(f"unknown task id {task_spec.get('id')!r}; expected one of {sorted(BUILDERS)}")
        self.task = task_spec
        self.workdir = Path(tempfile.mkdtemp(prefix="orsbox-twin-"))

    async def setup(self) -> None:
        """The task's files, as the orsbox environment writes them, under the session folder."""
        files, _expected = BUILDERS[self.task["id"]](random.Random(self.task["id"]))
        for path, content in files.items():
            target = self.workdir / Path(path).relative_to("/workspace")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)

    async def teardown(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=self.task["instruction"] + "\n\nUse the bash tool to work in /workspace, "
                          "then call submit to have your work graded.")]

    @tool  # type: ignore[untyped-decorator]
    async def bash(self, params: BashInput) -> ToolOutput:
        # (the docstring is orsbox's ShellTools.bash's, set below; unlike it, each call is a fresh shell here)
        output, metadata = await run_command(params.command, self.workdir, params.timeout)
        return ToolOutput(blocks=[TextBlock(text=output)], metadata=metadata, reward=0.0, finished=False)

    @tool  # type: ignore[untyped-decorator]
    async def restart_shell(self, params: RestartShellInput) -> ToolOutput:
        # (the docstring is orsbox's ShellTools.restart_shell's, set below)
        return ToolOutput(blocks=[TextBlock(text="The shell was restarted.")], reward=0.0)

    @tool(exclusive=True)  # type: ignore[untyped-decorator]
    async def submit(self, params: SubmitInput) -> ToolOutput:
        """Submit the workspace for grading. Ends the episode."""
        return ToolOutput(blocks=[TextBlock(text="Submitted (the reference twin does not grade).")],
                          metadata={"passed": None}, reward=0.0, finished=True)


# Descriptions as orsbox lists them: the docstring with its indentation removed
# (openreward only strip()s it, which keeps the continuation lines' indentation).
BashTwin.bash.__doc__ = ShellTools.bash.__doc__
BashTwin.restart_shell.__doc__ = ShellTools.restart_shell.__doc__
for _fn in (BashTwin.bash, BashTwin.restart_shell, BashTwin.submit):
    _fn.__doc__ = inspect.cleandoc(_fn.__doc__ or "")


# ---------------------------------------------------------------- serving


def load_orwdemo() -> type[Environment]:
    """`images/orwdemo`'s DemoEnv, unmodified, named `orwdemo` as orsbox serves it (openreward names by class)."""
    path = ROOT / "images" / "orwdemo" / "orwdemo_env.py"
    spec = importlib.util.spec_from_file_location("orwdemo_env", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = sys.modules.setdefault("orwdemo_env", importlib.util.module_from_spec(spec))
    if not hasattr(module, "DemoEnv"):
        spec.loader.exec_module(module)
    return type("Orwdemo", (module.DemoEnv,), {"__doc__": module.DemoEnv.__doc__})


def make_reference_app() -> Any:
    """The reference server's ASGI (FastAPI) app, serving the twin as `bash` (the default) and `orwdemo`."""
    return Server([BashTwin, load_orwdemo()]).app


def run_reference_server(port: int, host: str = "127.0.0.1", log_level: str = "warning") -> None:
    """Serve the twin with uvicorn until SIGINT/SIGTERM (blocks). Loopback only by default."""
    import uvicorn

    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError("the reference twin runs commands unsandboxed: serve it on loopback only")
    uvicorn.run(make_reference_app(), host=host, port=port, log_level=log_level,
                timeout_keep_alive=60, access_log=False)


@contextlib.contextmanager
def reference_server_process(port: int, *, log_path: Path | None = None) -> Iterator[Any]:
    """Run the twin's server in a child process for the duration of the block; yields the Popen."""
    import subprocess

    log_file = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    env = {**os.environ, "OPENREWARD_DISABLE_UPDATE_CHECK": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.reference_bash", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log_path is not None and not isinstance(log_file, int):
            log_file.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the host-side bash twin with the openreward reference server.")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--host", default="127.0.0.1", help="loopback only")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    run_reference_server(args.port, args.host, args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
