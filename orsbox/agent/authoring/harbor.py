"""The built-in environment of Harbor tasks: `bash` and the file tools in the task's directory, and `submit`.

Runs inside a task's own image (built by `orsbox/harbor/images.py`), as the agent's entrypoint
`HARBOR_ENTRYPOINT`. Its task (from the server, at setup) is
`{"id", "instruction", "workdir", "agent_timeout_sec", "verifier": {"timeout_sec", "env", "user"}}`;
the tests are not in it, nor anywhere in the container: the server sends them with the `submit` call
(`deliver`), after which `submit` stops every process of the command user and runs the verifier
(`grading/harbor_verifier.py`). Past `agent_timeout_sec` from setup only `submit` is accepted.

Stdlib only, Python 3.8+.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..grading.harbor_verifier import DeliveryError, Verdict, decode_tests, run_verifier
from ..layout import GRADER_UID, WORKSPACE
from ..runtime.processes import RUNNER
from ..runtime.procfs import kill_processes
from .blocks import JSONObject, TextBlock, ToolOutput
from .environment import Environment
from .tools import tool
from .toolsets import FileTools, ShellTools

HARBOR_ENTRYPOINT = "orsbox.agent.authoring.harbor:HarborEnvironment"


class HarborEnvironment(ShellTools, FileTools, Environment):
    """One Harbor task: work with bash and the file tools, then `submit` to have the task's verifier grade it."""

    def __init__(self, task: JSONObject, secrets: Optional[Dict[str, str]] = None) -> None:
        super().__init__(task, secrets)
        workdir = str(task.get("workdir") or WORKSPACE)
        self.workspace = workdir if workdir.startswith("/") else WORKSPACE
        self._tests: Optional[Tuple[Dict[str, bytes], List[str]]] = None
        self._delivery_problem: Optional[str] = None
        self._deadline: Optional[float] = None

    @classmethod
    def list_splits(cls) -> Sequence[str]:
        return []  # the server reads the dataset; this class is never described

    @classmethod
    def list_tasks(cls, split: str) -> Sequence[JSONObject]:
        return []

    def setup(self) -> None:
        if not os.path.isdir(self.workspace):
            raise RuntimeError("the task's working directory %s does not exist in its image" % self.workspace)
        timeout = self.task.get("agent_timeout_sec")
        if isinstance(timeout, (int, float)) and timeout > 0:
            self._deadline = time.monotonic() + float(timeout)

    def get_prompt(self) -> List[TextBlock]:
        return [TextBlock(str(self.task.get("instruction", "")))]

    def deliver(self, tool: str, payload: Any) -> None:
        if tool != "submit":
            return
        try:
            self._tests, self._delivery_problem = decode_tests(payload), None
        except DeliveryError as exc:
            self._tests, self._delivery_problem = None, str(exc)

    async def call_tool(self, name: str, tool_input: Any) -> JSONObject:
        if name != "submit" and self._deadline is not None and time.monotonic() > self._deadline:
            text = ("The agent's time for this task (%gs, [agent].timeout_sec) is up: only submit is accepted now."
                    % float(self.task["agent_timeout_sec"]))
            return {"ok": True, "output": ToolOutput([TextBlock(text)], reward=0.0,
                                                     metadata={"agent_timeout": True}).to_json()}
        return await super().call_tool(name, tool_input)

    @tool(exclusive=True)
    async def submit(self) -> ToolOutput:
        """End the episode: your processes are stopped, then the task's tests run and give the reward."""
        if self._shell is not None:
            await self._shell.close()
        kill_processes(RUNNER.limits.uid)  # whatever it left running can no longer change what the tests see
        tests, self._tests = self._tests, None
        if tests is None:
            verdict = Verdict(0.0, {"failure": "verifier",
                                    "reason": "the tests did not arrive: %s" % (self._delivery_problem or
                                                                                "the server sent none")})
        else:
            verifier = self.task.get("verifier") or {}
            verdict = await run_verifier(tests[0], tests[1], workdir=self.workspace,
                                         timeout=float(verifier.get("timeout_sec") or 600.0),
                                         env=dict(verifier.get("env") or {}), uid=GRADER_UID)
            if verifier.get("user") not in (None, "root", 0):
                verdict.metadata["verifier_user_not_honoured"] = str(verifier.get("user"))[:64]
        return ToolOutput(blocks=[TextBlock(verdict.summary)], metadata=verdict.metadata, reward=verdict.reward,
                          finished=True)
