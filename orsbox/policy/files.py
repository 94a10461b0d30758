"""Policy files: a folder of `*.toml`, validated as a whole at start-up.

Resolution, per field: `sandbox_policies/<environment>.toml` (or the policy an
image's `orsbox.policy` label names) ▸ `sandbox_policies/default.toml` ▸ the
built-in hardened defaults of `SandboxPolicy`. A file that does not validate is
refused at start-up with its name, the field and what is allowed.

What only a backend knows (whether the engine has a runtime, whether the host can
firewall a network) comes in as arguments: this package imports no backend.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from .model import SandboxPolicy

#: A backend's word on one policy: why it cannot run it, or None.
PolicyCheck = Callable[[SandboxPolicy], str | None]


class PolicySet:
    """The policy files of one folder, validated as a whole at start-up."""

    def __init__(self, overrides: dict[str, dict[str, Any]], files: dict[str, Path] | None = None) -> None:
        self._overrides = overrides  # policy name -> fields given in its file
        self._files = files or {}  # policy name -> its file

    @classmethod
    def load(cls, folder: Path) -> PolicySet:
        """Read and validate every `*.toml` in `folder`; a missing folder means built-in defaults only."""
        policies, problems = cls.read(folder)
        if problems:
            raise ConfigError("; ".join(problems))
        return policies

    @classmethod
    def read(cls, folder: Path) -> tuple[PolicySet, list[str]]:
        """The valid files of `folder`, and one line per problem: file, field, what is allowed."""
        overrides: dict[str, dict[str, Any]] = {}
        files: dict[str, Path] = {}
        problems: list[str] = []
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            try:
                data = tomllib.loads(path.read_text())
                SandboxPolicy.model_validate(data)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            except ValidationError as exc:
                problems.append(f"{path}: {_describe(exc)}")
                continue
            overrides[path.stem], files[path.stem] = data, path
        policies = cls(overrides, files)
        for name in overrides:
            try:
                policies.resolve(name)  # a file valid alone may still clash with default.toml
            except ConfigError as exc:
                problems.append(str(exc.detail))
        return policies, problems

    def names(self) -> list[str]:
        """The policy files there are, by name (`default` included if present)."""
        return sorted(self._overrides)

    def file(self, name: str) -> Path | None:
        return self._files.get(name)

    def fields_of(self, name: str) -> dict[str, Any]:
        """The fields policy file `name` sets (none if there is no such file)."""
        return dict(self._overrides.get(name, {}))

    def resolve(self, environment: str, policy_name: str | None = None) -> SandboxPolicy:
        """The policy of `environment`: its own file (or `policy_name`'s) ▸ default ▸ built-in."""
        fields = dict(self._overrides.get("default", {}))
        fields.update(self._overrides.get(policy_name or environment, {}))
        try:
            return SandboxPolicy.model_validate(fields)
        except ValidationError as exc:
            own = self._files.get(policy_name or environment) or f"policy for {environment!r}"
            raise ConfigError(f"{own} (with default.toml): {_describe(exc)}") from exc

    def runtime_problems(self, runtime_problem: PolicyCheck) -> list[str]:
        """Policies (default and every file) the engine cannot run, one line each.

        `runtime_problem` is the backend's word on one policy, e.g. the Docker backend's
        `runtime_problem` with the engine's runtimes (`backends/docker/settings.py`).
        """
        problems = []
        for name in sorted({"default", *self._overrides}):
            problem = runtime_problem(self.resolve(name))
            if problem:
                problems.append(f"{self._files.get(name) or 'built-in defaults'}: {problem}")
        return problems

    def network_problems(self, firewall_problem: str | None) -> list[str]:
        """Policies (default and every file) with a network of their own, where the host cannot firewall one."""
        if firewall_problem is None:
            return []
        return [f"{self._files.get(name) or 'built-in defaults'}: network = {policy.network!r}: {firewall_problem}"
                for name in sorted({"default", *self._overrides})
                if (policy := self.resolve(name)).network != "none"]

    def require_runtimes(self, runtime_problem: PolicyCheck) -> None:
        """Refuse (at start-up) policies that ask for a runtime the engine does not have."""
        problems = self.runtime_problems(runtime_problem)
        if problems:
            raise ConfigError("; ".join(problems))

    def require_network(self, firewall_problem: str | None) -> None:
        """Refuse (at start-up) policies with a network of their own where orsbox cannot set firewall rules."""
        problems = self.network_problems(firewall_problem)
        if problems:
            raise ConfigError("; ".join(problems))


def _describe(exc: ValidationError) -> str:
    return "; ".join(_describe_one(err) for err in exc.errors())


def _describe_one(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        known = ", ".join(SandboxPolicy.model_fields)
        return f"field {where}: unknown field (allowed fields: {known})"
    if not where:  # a check across fields
        return str(err["msg"]).removeprefix("Value error, ")
    info = SandboxPolicy.model_fields.get(where)
    meaning = f" [{where}: {info.description}]" if info else ""
    return f"field {where}: {err['msg']} (got {err.get('input')!r}){meaning}"
