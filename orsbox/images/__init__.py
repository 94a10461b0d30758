"""Build orsbox's Docker images reproducibly, and skip the ones that are current (``orsbox build``).

Two kinds of image are built from the ``images/`` directory:

* ``orsbox/base`` (`base`): Debian made with ``debootstrap`` from the host's own Debian
  mirror (`mirror`), or built ``FROM`` the image ``ORSBOX_BASE_FROM`` names.
* ``orsbox/<name>`` (`build`): every other directory ``images/<name>/`` with a
  ``Dockerfile``, built on the exact base tag; a ``requirements.txt``'s wheels are
  vendored on the host with the host's pip (`vendoring`).

Each image is tagged by the hash of its inputs (`hashing`) and skipped when that tag
exists. `engine` talks to Docker, `host` runs debootstrap, tar and pip. Every failure is
an `ImageBuildError` (errors.py) saying which step failed and why.

The package is synchronous: it is meant for the CLI, not for the server's event loop.
"""

from ..errors import ImageBuildError
from .build import build_images, image_names
from .engine import BuiltImage, Progress
from .hashing import BASE, IMAGE_PREFIX

__all__ = ["BASE", "IMAGE_PREFIX", "BuiltImage", "ImageBuildError", "Progress", "build_images", "image_names"]
