"""orsbox's one error tree. Each class carries its HTTP status; one middleware maps them.

    OrsboxError 500
    ├── BadRequest 400 ─── MissingSessionId, SessionExists, InvalidSplit, InvalidIndex, BadSecrets
    ├── BodyTooLarge 413   (past max_body_bytes)
    ├── InvalidBody 422    (detail is FastAPI's list of errors)
    ├── NotFound 404 ───── EnvNotFound, SessionNotFound
    ├── SessionGone 410    (deleted, reaped, failed: the reason is in the message)
    ├── NotReady 503       (still starting; carries Retry-After)
    ├── TooManySessions 429, ShuttingDown 503 (admission control; carry Retry-After)
    ├── SetupFailed 500    (the sandbox or the environment's setup failed)
    ├── ToolFailed 500, EnvironmentFailed 500 (the environment's code raised)
    ├── AgentGone 502      (the in-container agent or its container died)
    ├── SandboxError 500   (the container engine failed)
    ├── ConfigError        (bad configuration or policy file; refused at start-up)
    ├── InstanceLocked     (another `orsbox serve` holds this state dir or node id; carries its pid)
    └── ImageBuildError    (`orsbox build`: an image could not be built; says which step and why)

`detail` texts match the ORS reference server where it has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class OrsboxError(Exception):
    status = 500
    code = "internal"
    retry_after: int | None = None  # seconds, sent as Retry-After

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail: Any = detail


class BadRequest(OrsboxError):
    status, code = 400, "bad_request"


class MissingSessionId(BadRequest):
    code = "missing_session_id"

    def __init__(self) -> None:
        super().__init__("X-Session-ID header is required")


class SessionExists(BadRequest):
    code = "session_exists"

    def __init__(self) -> None:
        super().__init__("Session already exists")


class InvalidSplit(BadRequest):
    code = "invalid_split"

    def __init__(self) -> None:
        super().__init__("Invalid split")


class InvalidIndex(BadRequest):
    code = "invalid_index"

    def __init__(self) -> None:
        super().__init__("Invalid index")


class BadSecrets(BadRequest):
    code = "bad_secrets"


class BodyTooLarge(OrsboxError):
    """A request body past `max_body_bytes`."""

    status, code = 413, "body_too_large"


class InvalidBody(OrsboxError):
    """A body that is not JSON or does not fit its model: 422 with a list, as FastAPI answers."""

    status, code = 422, "invalid_body"

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid body")
        self.detail = errors


class Unauthorized(OrsboxError):
    """No API key, or one the server does not know."""

    status, code = 401, "unauthorized"


class ImageRefused(OrsboxError):
    """A sandbox's image is not one ops allow."""

    status, code = 403, "image_refused"


class ImageUnavailable(OrsboxError):
    """A sandbox's image is not on the engine and could not be pulled: final, the client does not retry."""

    status, code = 404, "image_unavailable"


class Forbidden(OrsboxError):
    status, code = 403, "forbidden"


class RangeNotSatisfiable(OrsboxError):
    status, code = 416, "range_not_satisfiable"


class InsufficientStorage(OrsboxError):
    status, code = 507, "insufficient_storage"


class NotFound(OrsboxError):
    status, code = 404, "not_found"


class EnvNotFound(NotFound):
    code = "environment_not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"

    def __init__(self) -> None:
        super().__init__("Active environment not found")


class SessionGone(OrsboxError):
    status, code = 410, "session_gone"


class NotReady(OrsboxError):
    status, code = 503, "not_ready"
    retry_after = 2  # seconds

    def __init__(self) -> None:
        super().__init__("Environment still starting.")


class TooManySessions(OrsboxError):
    """Admission control: a session limit is reached."""

    status, code = 429, "too_many_sessions"
    retry_after = 5

    def __init__(self, detail: str, *, limit: str = "server") -> None:
        super().__init__(detail)
        self.limit = limit  # which: server, environment, key_sessions, key_starts (a metrics label)


class ShuttingDown(OrsboxError):
    status, code = 503, "shutting_down"
    retry_after = 5

    def __init__(self) -> None:
        super().__init__("orsbox is shutting down; open new sessions elsewhere")


class SetupFailed(OrsboxError):
    status, code = 500, "setup_failed"


class AgentGone(OrsboxError):
    status, code = 502, "agent_gone"


class SandboxError(OrsboxError):
    status, code = 500, "sandbox_error"


class ConfigError(OrsboxError):
    code = "config_error"


class InstanceLocked(OrsboxError):
    """Another `orsbox serve` holds this state dir or node id (CLI only, never HTTP): `pid` is the holder's."""

    code = "instance_locked"

    def __init__(self, detail: str, *, pid: int | None, path: Path) -> None:
        super().__init__(detail)
        self.pid, self.path = pid, path


class ImageBuildError(OrsboxError):
    """An image could not be built; the message says which step failed and why (CLI only, never HTTP)."""

    code = "image_build_failed"


class ToolFailed(OrsboxError):
    """The tool raised: reaches the client as an SSE `error` event."""

    status, code = 500, "tool_failed"


class EnvironmentFailed(OrsboxError):
    """The environment's own code raised outside a tool (prompt, task tools)."""

    status, code = 500, "environment_error"


class HarborTaskError(OrsboxError):
    """A Harbor task folder is malformed (task.toml, instruction.md, environment/): names the file and field."""

    code = "harbor_task_invalid"
