"""Blocks and results: what prompts and tools hand back (`TextBlock`, `ImageBlock`, `ToolOutput`), and splits.

Stdlib only, Python 3.8+: part of the authoring API environments import inside their images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

JSON = Any
JSONObject = Dict[str, Any]

SPLIT_TYPES = ("train", "validation", "test")


@dataclass
class TextBlock:
    text: str
    detail: Optional[JSONObject] = None

    def to_json(self) -> JSONObject:
        return {"text": self.text, "detail": self.detail, "type": "text"}


@dataclass
class ImageBlock:
    data: str  # base64
    mimeType: str  # noqa: N815 - the ORS field name
    detail: Optional[JSONObject] = None

    def to_json(self) -> JSONObject:
        return {"data": self.data, "mimeType": self.mimeType, "detail": self.detail, "type": "image"}


Block = Union[TextBlock, ImageBlock]


@dataclass
class ToolOutput:
    """What a tool returns: blocks for the model, and the RL signal."""

    blocks: Sequence[Block]
    metadata: Optional[JSONObject] = None
    reward: Optional[float] = None
    finished: bool = False

    def to_json(self) -> JSONObject:
        return {
            "blocks": blocks_to_json(self.blocks),
            "metadata": self.metadata,
            "reward": None if self.reward is None else float(self.reward),
            "finished": bool(self.finished),
        }


@dataclass
class Split:
    name: str
    type: str = "validation"

    def to_json(self) -> JSONObject:
        return {"name": self.name, "type": self.type}


def blocks_to_json(blocks: Sequence[Any]) -> List[JSONObject]:
    out = []
    for block in blocks:
        if not isinstance(block, (TextBlock, ImageBlock)):
            raise TypeError("expected TextBlock or ImageBlock, got %s" % type(block).__name__)
        out.append(block.to_json())
    return out


def split_to_json(split: Union[Split, str]) -> JSONObject:
    """A split as ORS lists it; a bare name gets its own name as type if it is one."""
    if isinstance(split, Split):
        return split.to_json()
    return {"name": split, "type": split if split in SPLIT_TYPES else "validation"}

