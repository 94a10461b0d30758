"""`orsbox build` for Harbor datasets: each configured dataset's task images, then one line per task."""

from __future__ import annotations

import sys
from collections.abc import Collection

from ..config import Config
from ..errors import HarborTaskError, ImageBuildError
from ..images.engine import Progress
from .dataset import load_dataset
from .images import build_dataset


def build_datasets(config: Config, names: list[str] | None, *, force: bool = False,
                   allow_network: Collection[str] = (), progress: Progress = print) -> int:
    """Build the datasets `names` (all configured when None); the number of tasks that failed (or were left out)."""
    failures = 0
    for name, folder in config.datasets.items():
        if names is not None and name not in names:
            continue
        try:
            dataset = load_dataset(name, folder)
            report = build_dataset(dataset, config.base_map, progress=progress, force=force,
                                   network=name in allow_network)
        except (HarborTaskError, ImageBuildError) as exc:
            print(f"orsbox build: dataset {name}: {exc.detail}", file=sys.stderr)
            failures += 1
            continue
        built = sum(image.built for image in report.images)
        print(f"\ndataset {name} ({folder}): {len(report.images)} task image(s): {built} built, "
              f"{len(report.images) - built} current, {len(report.failures)} failed")
        for image in report.images:
            took = f" in {report.seconds[image.tag]:.1f}s" if image.tag in report.seconds else ""
            print(f"  {image.tag:60} {'built' + took if image.built else 'current'}")
        for task, reason in report.failures.items():
            print(f"  {task}: FAILED: {reason}", file=sys.stderr)
        failures += len(report.failures)
    return failures
