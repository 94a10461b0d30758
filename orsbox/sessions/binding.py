"""Bindings: which session a pool container serves, signed by the server.

A pool container is started for no session, and its labels cannot change once it runs, so the
session it is given is held by its agent instead: a `Binding` (session id, owner, when), with an
HMAC under the state dir's server secret over those and the container's name. The agent reports it
in `hello`; a restarted server adopts the container as that session only if the HMAC checks out
for that container. A compromised container can read its own binding but cannot make one for
another session, or reuse its own in another container.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

MAX_FIELD = 256  # characters of a binding field read from an agent


@dataclass(frozen=True)
class Binding:
    session_id: str
    owner: str
    bound_at: float  # unix time: the session's lifetime counts from here
    token: str

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "owner": self.owner, "bound_at": self.bound_at, "token": self.token}

    @classmethod
    def parse(cls, answer: object) -> Binding | None:
        """A binding as an agent reported it (hostile input), or None where it is not one."""
        if not isinstance(answer, dict):
            return None
        sid, owner, token = (answer.get(k) for k in ("session_id", "owner", "token"))
        bound_at = answer.get("bound_at")
        if not all(isinstance(v, str) and 0 < len(v) <= MAX_FIELD for v in (sid, owner, token)):
            return None
        if not isinstance(bound_at, int | float) or isinstance(bound_at, bool) or not 0 < bound_at < 1e11:
            return None
        return cls(str(sid), str(owner), float(bound_at), str(token))


class Binder:
    """Signs and checks bindings under one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def bind(self, container: str, session_id: str, owner: str) -> Binding:
        bound_at = round(time.time(), 3)
        return Binding(session_id, owner, bound_at, self._sign(container, session_id, owner, bound_at))

    def verify(self, container: str, binding: Binding) -> bool:
        expected = self._sign(container, binding.session_id, binding.owner, binding.bound_at)
        return hmac.compare_digest(expected, binding.token)

    def _sign(self, container: str, session_id: str, owner: str, bound_at: float) -> str:
        message = "\0".join((container, session_id, owner, repr(bound_at))).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
