"""The environment authoring API: what environment authors subclass, decorate and return.

`environment` (Environment, TaskTable), `tools` (@tool, input schemas), `blocks`
(TextBlock, ImageBlock, ToolOutput, Split), `toolsets` (ShellTools, FileTools) and
`openreward_adapter` (unmodified openreward environments). Stdlib only, Python 3.8+.
"""

from .blocks import ImageBlock, Split, TextBlock, ToolOutput
from .environment import Environment, TaskTable, ToolSpec
from .tools import AuthoringError, tool

__all__ = [
    "AuthoringError",
    "Environment",
    "ImageBlock",
    "Split",
    "TaskTable",
    "TextBlock",
    "ToolOutput",
    "ToolSpec",
    "tool",
]
