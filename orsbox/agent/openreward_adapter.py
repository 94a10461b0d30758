"""Serving an unmodified `openreward` Environment through the orsbox agent (to be completed).

`adapt(cls)` returns an orsbox `Environment` subclass that delegates to `cls` when `cls`
is an `openreward.environments.Environment` subclass (openreward installed in the image),
else None. Stdlib only at import time: openreward is imported lazily.
"""

from __future__ import annotations

from typing import Any, Optional, Type

from .authoring import Environment


def adapt(cls: Any) -> Optional[Type[Environment]]:
    return None
