"""Built-in toolsets environment authors mix in: a persistent shell and file tools.

    class MyEnv(ShellTools, FileTools, Environment):
        ...

Both act as the unprivileged command user with the session's time and output
limits; file tools are confined to the workspace (no symlink escape).
Stdlib only, Python 3.8+.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, Optional, Tuple

from ..layout import WORKSPACE
from ..runtime import fileops
from ..runtime.processes import RUNNER
from ..runtime.shell import Shell
from .blocks import TextBlock, ToolOutput
from .tools import tool

#: The file operations program, run as the command user.
FILEOPS = os.path.abspath(fileops.__file__)
FILEOP_TIMEOUT = 30.0  # s


class ShellTools:
    """`bash` in one persistent shell per session (cwd, variables and background jobs survive), `restart_shell`."""

    workspace = WORKSPACE
    _shell: Optional[Shell] = None

    @property
    def shell(self) -> Shell:
        if self._shell is None:
            self._shell = Shell(RUNNER, self.workspace)
        return self._shell

    @tool
    async def bash(self, command: str, timeout: Optional[float] = None) -> ToolOutput:
        """Run a command in a persistent bash shell, starting in /workspace; returns its stdout and stderr.

        The working directory, exported variables and background jobs carry over to later calls.
        `timeout` is in seconds; a command that outlives it is killed with the shell, and the next
        call gets a fresh one.
        """
        result = await self.shell.run(command, timeout=timeout)
        return ToolOutput(blocks=[TextBlock(result.output)], metadata=result.metadata(), reward=0.0)

    @tool
    async def restart_shell(self) -> ToolOutput:
        """Kill the shell and everything it started; the next bash call starts afresh in /workspace."""
        await self.shell.restart()
        return ToolOutput(blocks=[TextBlock("The shell was restarted.")], reward=0.0)


class FileTools:
    """`read_file`, `write_file`, `edit_file`, `list_files`, confined to the workspace."""

    workspace = WORKSPACE

    @tool(concurrent=True)
    async def read_file(self, path: str, start_line: Optional[int] = None,
                        end_line: Optional[int] = None) -> ToolOutput:
        """Show a text file with line numbers; `start_line`/`end_line` (1-based, inclusive) pick a range."""
        answer = await self.file_op("read", path=path, start_line=start_line, end_line=end_line)
        return _file_output(answer, lambda a: a["text"] or "(no lines in this range)",
                            lambda a: {"lines": a["lines"], "start_line": a["start_line"], "end_line": a["end_line"]})

    @tool
    async def write_file(self, path: str, content: str) -> ToolOutput:
        """Create or overwrite a file (parent folders are created) with `content`."""
        answer = await self.file_op("write", path=path, content=content)
        return _file_output(answer, lambda a: "Wrote %d bytes to %s." % (a["bytes"], a["path"]), lambda a: {})

    @tool
    async def edit_file(self, path: str, old: str, new: str) -> ToolOutput:
        """Replace the text `old`, which must occur exactly once in the file, with `new`."""
        answer = await self.file_op("edit", path=path, old=old, new=new)
        return _file_output(answer, lambda a: "Edited %s at line %d." % (a["path"], a["line"]), lambda a: {})

    @tool(concurrent=True)
    async def list_files(self, path: str = ".") -> ToolOutput:
        """List a folder of the workspace: name, kind and size of each entry."""
        answer = await self.file_op("list", path=path)

        def render(a: Dict[str, Any]) -> str:
            rows = ["%-4s %10s  %s" % (e["kind"], "" if e["size"] is None else e["size"], e["name"])
                    for e in a["entries"]]
            return "\n".join(rows) or "(empty)"

        return _file_output(answer, render, lambda a: {"entries": len(a["entries"])})

    async def file_op(self, op: str, **request: Any) -> Dict[str, Any]:
        """Run one file operation as the command user; its JSON answer."""
        request.update(op=op, workspace=self.workspace)
        answer = await RUNNER.run_helper([sys.executable, "-I", "-S", FILEOPS], stdin=json.dumps(request).encode(),
                                         cwd=self.workspace, timeout=FILEOP_TIMEOUT)
        if answer is None:
            return {"ok": False, "error": "the file operation did not finish within %d s" % FILEOP_TIMEOUT}
        out, err = answer
        try:
            return dict(json.loads(out))
        except ValueError:
            return {"ok": False, "error": "the file operation failed: %s" % err.decode(errors="replace")[-500:]}


def _file_output(answer: Dict[str, Any], text: Callable[[Dict[str, Any]], str],
                 metadata: Callable[[Dict[str, Any]], Dict[str, Any]]) -> ToolOutput:
    if not answer.get("ok"):
        return ToolOutput(blocks=[TextBlock("Error: %s" % answer.get("error"))], metadata={"error": True}, reward=0.0)
    shown, truncated = _capped(text(answer), RUNNER.limits.output_cap)
    return ToolOutput(blocks=[TextBlock(shown)], metadata=dict(metadata(answer), truncated=truncated), reward=0.0)


def _capped(text: str, cap: int) -> Tuple[str, bool]:
    """`text` cut to at most `cap` bytes of UTF-8 (the policy's output cap), with a note saying so."""
    data = text.encode("utf-8")
    if len(data) <= cap:
        return text, False
    note = "\n[truncated: %d of %d bytes shown; read a range of lines]" % (cap, len(data))
    return data[:cap].decode("utf-8", "ignore") + note, True
