"""An openreward Environment whose tools drive an openreward sandbox, for the fast tier (fake backend).

Written purely against openreward, as hub environments are: its sandbox client finds the service at
OPENREWARD_SESSION_URL with the key in OPENREWARD_API_KEY, both set by the agent. The sandbox is made
on first use, in the task's `folder` (one the fake sandbox's command user may write).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from openreward import AsyncOpenReward
from openreward.api.sandboxes.types import SandboxSettings
from openreward.environments import Environment, JSONObject, Split, TextBlock, ToolOutput, tool
from pydantic import BaseModel

SETTINGS = {"environment": "tests", "image": "fake/sandbox:latest", "machine_size": "1:1"}


class RoundTripInput(BaseModel):
    folder: str
    size: int = 5 * 1024 * 1024 + 3


class SandboxUser(Environment):
    """Runs a command and moves a file up and down through its own sandbox."""

    def __init__(self, task_spec: JSONObject = {}, secrets: dict[str, str] = {}) -> None:  # noqa: B006
        super().__init__(task_spec, secrets)
        self.box: Any = None

    @classmethod
    def list_splits(cls) -> list[Split]:
        return [Split(name="train", type="train")]

    @classmethod
    def list_tasks(cls, split: str) -> list[JSONObject]:
        return [{"id": "t0"}]

    def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text="Call roundtrip.")]

    async def teardown(self) -> None:
        if self.box is not None:
            await self.box.stop()

    @tool
    async def roundtrip(self, params: RoundTripInput) -> ToolOutput:
        """Make the sandbox if there is none; run a command; upload and download a file; answer what happened."""
        if self.box is None:
            self.box = AsyncOpenReward().sandbox(SandboxSettings(**SETTINGS))
            await self.box.start()
        seen: dict[str, Any] = {"sid": self.box.sid, "url": os.environ.get("OPENREWARD_SESSION_URL")}
        seen["run"] = await self.box.check_run("echo $((6 * 7))")
        with tempfile.TemporaryDirectory() as local:
            up, down = Path(local) / "up", Path(local) / "down"
            up.write_bytes(os.urandom(params.size))
            seen["sent"] = (await self.box.upload_from(up, f"{params.folder}/blob")).sha256
            await self.box.download_to(f"{params.folder}/blob", down)
            seen["local"] = hashlib.sha256(up.read_bytes()).hexdigest()
            seen["back"] = hashlib.sha256(down.read_bytes()).hexdigest()
        return ToolOutput(blocks=[TextBlock(text=json.dumps(seen))])

    @tool
    async def another(self) -> ToolOutput:
        """Try to make a second sandbox (past max_sandboxes = 1: refused)."""
        box = AsyncOpenReward().sandbox(SandboxSettings(**SETTINGS))
        try:
            await box.start()
        except Exception as exc:  # the refusal, as the client reports it
            return ToolOutput(blocks=[TextBlock(text=f"refused: {exc}")])
        await box.stop()
        return ToolOutput(blocks=[TextBlock(text="made")])
