"""The in-container agent and the environment authoring API.

Everything under `orsbox.agent` runs inside environment images with the image's
own `python3` (3.8+): stdlib only, and nothing imported from the rest of orsbox.
Environment authors import from here:

    from orsbox.agent import Environment, tool, ToolOutput, TextBlock, ImageBlock, Split
"""

from .authoring import (
    AuthoringError,
    Environment,
    ImageBlock,
    Split,
    TextBlock,
    ToolOutput,
    ToolSpec,
    tool,
)
from .commands import CommandResult

__all__ = [
    "AuthoringError",
    "CommandResult",
    "Environment",
    "ImageBlock",
    "Split",
    "TextBlock",
    "ToolOutput",
    "ToolSpec",
    "tool",
]
