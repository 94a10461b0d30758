"""Sandbox policies: ops-owned limits per environment, as data.

- `model.py`: `SandboxPolicy` (every field, its hardened default, its unit), sizes, `allow` entries,
  the agent's limits.
- `files.py`: `PolicySet`, the policy folder: loading, resolution (environment file ▸ default.toml ▸
  built-in), start-up checks on facts the backends give it.
- `explain.py`: where each value came from, `orsbox policy explain`'s report, the README's table.

Policies are data, and the layers below read them: this package imports no backend. The Docker
backend makes a policy container settings (`backends/docker/settings.py`: `container_settings`, the
seccomp profile, runtimes); the network backend makes its network (`backends/network/`).
"""

from .explain import BUILT_IN, explain, explanation, format_bytes, format_value, reference_markdown
from .files import PolicyCheck, PolicySet
from .model import (
    ALLOW_EXAMPLES,
    MEMORY_HEADROOM,
    Bytes,
    SandboxPolicy,
    parse_allow_entry,
    parse_bytes,
    size_text,
)

__all__ = [
    "ALLOW_EXAMPLES",
    "BUILT_IN",
    "MEMORY_HEADROOM",
    "Bytes",
    "PolicyCheck",
    "PolicySet",
    "SandboxPolicy",
    "explain",
    "explanation",
    "format_bytes",
    "format_value",
    "parse_allow_entry",
    "parse_bytes",
    "reference_markdown",
    "size_text",
]
