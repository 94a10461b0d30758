"""Policies for people: where each value came from, `orsbox policy explain`'s report, the README's table.

What a backend makes of a policy (container settings, the network) is not known
here: the caller composes those sections (`backends/docker/settings.py:
explain_sections`) and passes them in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .files import PolicySet
from .model import SandboxPolicy, parse_bytes, size_text

BUILT_IN = "built-in"


def explain(policies: PolicySet, environment: str, policy_name: str | None = None) -> list[tuple[str, Any, str]]:
    """Each field of `environment`'s policy as (field, value, source): its file, default.toml or built-in."""
    policy = policies.resolve(environment, policy_name)
    own = policy_name or environment
    layers = [(policies.file(name), policies.fields_of(name)) for name in (own, "default")]
    rows = []
    for name in SandboxPolicy.model_fields:
        source = next((str(path) for path, fields in layers if path is not None and name in fields), BUILT_IN)
        rows.append((name, getattr(policy, name), source))
    return rows


def explanation(policies: PolicySet, environment: str, policy_name: str | None = None, *,
                sections: Sequence[tuple[str, str]] = ()) -> str:
    """`orsbox policy explain`'s report: each value and its source, then `sections` ((title, text) pairs:
    what the backend makes of the policy), then the agent limits."""
    policy = policies.resolve(environment, policy_name)
    own = policy_name or environment
    chain = [str(policies.file(name) or f"{name}.toml (no such file)") for name in dict.fromkeys([own, "default"])]
    lines = [f"resolution: {' ▸ '.join([*chain, BUILT_IN])}", ""]
    rows = [(name, format_value(name, value), source) for name, value, source in explain(policies, environment,
                                                                                         policy_name)]
    width = max(len(name) for name, _, _ in rows), max(len(value) for _, value, _ in rows)
    lines += [f"{'field':<{width[0]}}  {'value':<{width[1]}}  source"]
    lines += [f"{name:<{width[0]}}  {value:<{width[1]}}  {source}" for name, value, source in rows]
    limits = ("agent limits (enforced by the agent inside the container)", json.dumps(policy.agent_limits(), indent=2))
    for title, text in [*sections, limits]:
        lines += ["", f"{title}:", text]
    return "\n".join(lines)


def reference_markdown() -> str:
    """The policy fields as a Markdown table, for the README (a test keeps them in sync)."""
    rows = ["| field | default | meaning |", "| --- | --- | --- |"]
    for name, info in SandboxPolicy.model_fields.items():
        rows.append(f"| `{name}` | `{format_value(name, info.default)}` | {info.description} |")
    return "\n".join(rows)


def format_value(name: str, value: Any) -> str:
    """A policy value as it would be written in a policy file (sizes in binary units)."""
    info = SandboxPolicy.model_fields[name]
    if any(getattr(meta, "func", None) is parse_bytes for meta in info.metadata):
        return format_bytes(value)
    return json.dumps(value)


def format_bytes(size: int) -> str:
    """A size as a policy file would say it: 1073741824 -> "1g" (quoted), 100 -> 100."""
    text = size_text(size)
    return text if text.isdigit() else f'"{text}"'
