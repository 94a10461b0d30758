"""`orsbox.agent.toolsets`, as environments import it: the built-in toolsets live in `authoring.toolsets`."""

from .authoring.toolsets import FileTools, ShellTools

__all__ = ["FileTools", "ShellTools"]
