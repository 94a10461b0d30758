"""The in-container agent and the environment authoring API.

Everything under `orsbox.agent` runs inside environment images with the image's
own `python3` (3.8+): stdlib only, and nothing imported from the rest of orsbox.
Environment authors import from here:

    from orsbox.agent import Environment, tool, ToolOutput, TextBlock, ImageBlock, Split, TaskTable

The package: `authoring/` (what authors use), `runtime/` (the agent's socket server and
every process it starts), `grading/` (hidden tests and files across the uid boundary),
`wire` (the channel contract, shared with the server) and `layout` (paths, uids, labels).
"""

from .authoring import (
    AuthoringError,
    Environment,
    ImageBlock,
    Split,
    TaskTable,
    TextBlock,
    ToolOutput,
    ToolSpec,
    tool,
)
from .runtime.processes import CommandResult

__all__ = [
    "AuthoringError",
    "CommandResult",
    "Environment",
    "ImageBlock",
    "Split",
    "TaskTable",
    "TextBlock",
    "ToolOutput",
    "ToolSpec",
    "tool",
]
