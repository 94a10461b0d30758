"""The catalog: which environments exist, and their discovery data.

Environments are images labelled `orsbox.environment`. Their splits, shared
tools and tasks are read once per image id, by running the image's agent in
describe mode in a locked-down container, and cached on disk under
`<state_dir>/catalog/<image id>-<agent digest>.json` (toolsets live in the agent
package). Discovery calls are answered from memory: no container per discovery call.

Images are untrusted: only those with a tag matching one of ops' `image_patterns` (default
`orsbox/*`, what `orsbox build` makes) become environments, and an image's `orsbox.policy` label
may only name a policy ops listed in `label_policies` (an image naming another is not served).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .backends.backend import Backend, EnvironmentImage, Sidecar
from .errors import BadRequest, EnvNotFound, InvalidIndex, InvalidSplit, SandboxError
from .policy import PolicySet, SandboxPolicy

log = structlog.get_logger()

JSONObject = dict[str, Any]


@dataclass(frozen=True)
class EnvironmentInfo:
    """One environment: its image, its resolved policy, and its discovery data."""

    image: EnvironmentImage
    policy: SandboxPolicy
    splits: list[JSONObject]
    tools: list[JSONObject]
    tasks: dict[str, list[JSONObject]]
    listable: dict[str, bool]  # False: the environment only offers num_tasks + get_task for that split
    # A Harbor dataset's: the environment (its image, sized policy) and setup task of one task, or BadRequest
    per_task: Callable[[JSONObject], tuple[EnvironmentInfo, JSONObject]] | None = None
    # Extra `call_tool` params for a tool (a Harbor task's tests, sent only with `submit`)
    call_extras: Callable[[str], Awaitable[JSONObject]] | None = None
    sidecars: tuple[Sidecar, ...] = ()  # a Harbor compose task's other services
    note: str = ""  # shown by `orsbox envs` (a Harbor dataset: how many of its tasks can start)

    @property
    def name(self) -> str:
        return self.image.name

    def for_task(self, task: JSONObject) -> tuple[EnvironmentInfo, JSONObject]:
        """The environment a session of `task` runs (a Harbor task's own image and resources), and its setup task."""
        return self.per_task(task) if self.per_task is not None else (self, task)

    def split_tasks(self, split: str) -> list[JSONObject]:
        if split not in self.tasks:
            raise InvalidSplit()
        return self.tasks[split]

    def listed_tasks(self, split: str) -> list[JSONObject]:
        """`/tasks`: refused, as by the reference, where the environment cannot list its tasks."""
        tasks = self.split_tasks(split)
        if not self.listable.get(split, True):
            raise BadRequest("list_tasks is not supported for this environment. "
                             "Use the index-based API (num_tasks + get_task) instead.")
        return tasks

    def task(self, split: str, index: int) -> JSONObject:
        """Python indexing, as the reference does: -1 is the last task."""
        tasks = self.split_tasks(split)
        if not -len(tasks) <= index < len(tasks):
            raise InvalidIndex()
        return tasks[index]

    def task_range(self, split: str, start: int | None, stop: int | None) -> list[JSONObject]:
        """Slice semantics: negatives resolve against n and clamp at 0, everything clamps to n."""
        tasks = self.split_tasks(split)
        return tasks[slice(*slice(start, stop).indices(len(tasks))[:2])]


@dataclass(frozen=True)
class CatalogSource:
    """Where a catalog's environments come from: the engine's images (and Harbor datasets), as ops allow."""

    backend: Backend
    policies: PolicySet
    cache_dir: Path
    only: list[str] | None = None
    image_patterns: Sequence[str] = ("orsbox/*",)
    label_policies: Collection[str] = ()
    datasets: Mapping[str, Path] | None = None
    base_map: Mapping[str, str] | None = None

    async def images(self, *, quiet: bool = False) -> list[EnvironmentImage]:
        """The newest admitted image of each environment name (one engine call)."""
        images = await self.backend.list_environment_images()
        return _newest_per_name([image for image in images if _admitted(image, self.image_patterns, quiet=quiet)])


class Catalog:
    """The environments this server serves, by lower-case name; `refresh()` reads them again (new images
    appear, replaced ones are served from their new image, removed ones go; live sessions keep theirs)."""

    def __init__(self, environments: dict[str, EnvironmentInfo], default: str | None = None,
                 source: CatalogSource | None = None) -> None:
        self._environments = environments
        names = sorted(environments)
        if default is not None and default.lower() not in environments:
            raise EnvNotFound(f"default environment {default!r} is not among {names}")
        self._configured_default = default.lower() if default else None
        self.default = self._configured_default or (names[0] if names else None)
        self.source = source
        self.seen: frozenset[tuple[str, str]] = frozenset()  # the images it was read from: (name, image id)
        self._retired: set[str] = set()  # environments removed by a refresh

    @classmethod
    async def load(cls, backend: Backend, policies: PolicySet, cache_dir: Path,
                   default: str | None = None, only: list[str] | None = None, *,
                   image_patterns: Sequence[str] = ("orsbox/*",),
                   label_policies: Collection[str] = (), datasets: Mapping[str, Path] | None = None,
                   base_map: Mapping[str, str] | None = None) -> Catalog:
        """Find environment images (all, or those named in `only`) and read (or recall) their discovery data;
        and the Harbor `datasets` (name -> folder), whose tasks' images `base_map` was applied to."""
        source = CatalogSource(backend, policies, cache_dir, only, image_patterns, label_policies, datasets, base_map)
        images = await source.images()
        catalog = cls(await _environments(source, images), default, source)
        catalog.seen = fingerprint(images)
        return catalog

    async def changed(self) -> bool:
        """Whether the engine's environment images differ from those the catalog was last read from."""
        assert self.source is not None
        return fingerprint(await self.source.images(quiet=True)) != self.seen

    async def refresh(self) -> dict[str, list[str]]:
        """Read the environments again; what was added, replaced (a new image) and removed."""
        assert self.source is not None
        images = await self.source.images()
        fresh = await _environments(self.source, images)
        self.seen = fingerprint(images)
        old = self._environments
        changes = {"added": sorted(set(fresh) - set(old)), "removed": sorted(set(old) - set(fresh)),
                   "replaced": sorted(name for name in set(fresh) & set(old)
                                      if fresh[name].image.image_id != old[name].image.image_id)}
        self._environments = fresh
        self._retired = (self._retired | set(changes["removed"])) - set(fresh)
        names = sorted(fresh)
        default = self._configured_default
        self.default = default if default in fresh else (names[0] if names else None)
        return changes

    def names(self) -> list[str]:
        """Environment names, the default first (the reference lists its first environment first)."""
        return sorted(self._environments, key=lambda name: (name != self.default, name))

    def environments(self) -> list[EnvironmentInfo]:
        return [self._environments[name] for name in self.names()]

    def is_environment(self, name: str) -> bool:
        """A name paths may start with: an environment served, or one removed while serving (its live
        sessions' calls still go to `/{name}/…`)."""
        return name.lower() in self._environments or name.lower() in self._retired

    def get(self, name: str) -> EnvironmentInfo:
        try:
            return self._environments[name.lower()]
        except KeyError:
            raise EnvNotFound(f"unknown environment {name!r}") from None


def fingerprint(images: list[EnvironmentImage]) -> frozenset[tuple[str, str]]:
    return frozenset((image.name, image.image_id) for image in images)


async def _environments(source: CatalogSource, images: list[EnvironmentImage]) -> dict[str, EnvironmentInfo]:
    """Every environment `source` gives: `images`' discovery data (described once per image id), and the
    Harbor datasets."""
    source.cache_dir.mkdir(parents=True, exist_ok=True)
    environments: dict[str, EnvironmentInfo] = {}
    wanted = {name.strip().lower() for name in source.only} if source.only else None
    for image in images:
        if wanted is not None and image.name not in wanted:
            continue
        if image.policy_name is not None and image.policy_name not in source.label_policies:
            log.error("environment_unavailable", env=image.name, image=image.tags[0],
                      reason=f"its orsbox.policy label names {image.policy_name[:100]!r}, which images may not "
                             f"choose (allowed: {sorted(source.label_policies) or 'none'}; ORSBOX_LABEL_POLICIES)")
            continue
        policy = source.policies.resolve(image.name, image.policy_name)
        try:
            data = await _described(source.backend, image, policy, source.cache_dir)
        except SandboxError as exc:  # one broken image must not keep the others from being served
            log.error("environment_unavailable", env=image.name, image=image.tags[0], reason=exc.detail)
            continue
        environments[image.name] = EnvironmentInfo(image, policy, data["splits"], data["tools"], data["tasks"],
                                                   data.get("listable", {}))
        tasks = sum(map(len, data["tasks"].values()))
        log.info("environment_found", env=image.name, image=image.tags[0], tasks=tasks)
    from .harbor.serving import dataset_environment  # here: the Harbor kind imports EnvironmentInfo

    for name, folder in (source.datasets or {}).items():
        if wanted is not None and name not in wanted:
            continue
        harbor = await dataset_environment(source.backend, name, folder, source.policies.resolve(name, None),
                                           source.base_map or {}, source.image_patterns)
        if harbor is not None:
            environments[name] = harbor
    return environments


def _admitted(image: EnvironmentImage, patterns: Sequence[str], *, quiet: bool = False) -> bool:
    """Whether a tag of `image` matches a pattern (a glob on `repository:tag`, or on the repository alone)."""
    for tag in image.tags:
        repository = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
        if any(fnmatch.fnmatchcase(tag, p) or fnmatch.fnmatchcase(repository, p) for p in patterns):
            return True
    if not quiet:
            log.info("environment_image_ignored", env=image.name,
                 image=image.tags[0] if image.tags else image.image_id[:19],
                 reason=f"no tag matches the image patterns {list(patterns)} (ORSBOX_IMAGE_PATTERNS)")
    return False


def _newest_per_name(images: list[EnvironmentImage]) -> list[EnvironmentImage]:
    newest: dict[str, EnvironmentImage] = {}
    for image in sorted(images, key=lambda i: i.created):
        newest[image.name] = image
    return [newest[name] for name in sorted(newest)]


async def _described(backend: Backend, image: EnvironmentImage, policy: SandboxPolicy,
                     cache_dir: Path) -> JSONObject:
    path = cache_dir / f"{image.image_id.replace(':', '_')}-{backend.agent_digest}.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    data = await backend.describe(image, policy)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    log.info("environment_described", env=image.name, image_id=image.image_id[:19])
    return data
