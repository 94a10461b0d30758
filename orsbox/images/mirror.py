"""Where debootstrap downloads Debian from: ORSBOX_DEBIAN_MIRROR, else the host's own apt sources.

The host's apt configuration already names a mirror it can reach (a local one, a proxy, a
snapshot): the first enabled ``deb`` entry for the ``main`` component of a Debian release, in
the order apt reads its files (``sources.list``, then ``sources.list.d/*.list`` and deb822
``*.sources`` by name). orsbox names no mirror of its own; when neither gives one, the build
stops and says how to set it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageBuildError

MIRROR_ENV = "ORSBOX_DEBIAN_MIRROR"
APT_DIR = Path("/etc/apt")
#: Suites that are a Debian release's main archive (not -security, -updates or another distribution's).
DEBIAN_RELEASES = frozenset({
    "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
    "oldoldstable", "oldstable", "stable", "testing", "unstable",
})
#: URI schemes debootstrap can download from.
SCHEMES = ("http://", "https://", "file:/")
_ONE_LINE = re.compile(r"^(?P<type>deb|deb-src)\s+(?:\[[^\]]*\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)(?P<components>.*)$")


@dataclass(frozen=True)
class Mirror:
    """A Debian mirror's URL, and where it was found (for the build's progress line)."""

    url: str
    source: str


def debian_mirror(apt_dir: Path | None = None) -> Mirror:
    """The mirror to debootstrap from: `MIRROR_ENV` if set, else the first Debian main entry in *apt_dir*."""
    explicit = os.environ.get(MIRROR_ENV, "").strip()
    if explicit:
        return Mirror(explicit, MIRROR_ENV)
    apt_dir = APT_DIR if apt_dir is None else apt_dir
    files = source_files(apt_dir)
    for path in files:
        for source in read_sources(path):
            url = source.debian_main()
            if url is not None:
                return Mirror(url, str(path))
    read = ", ".join(str(path) for path in files) or f"nothing (no apt sources in {apt_dir})"
    raise ImageBuildError(
        f"no Debian mirror to debootstrap the base from: read {read}, and none has a `deb` entry for "
        f"the main component of a Debian release; set {MIRROR_ENV} to one (e.g. http://deb.example.com/debian)"
    )


@dataclass(frozen=True)
class AptSource:
    """One apt source entry: a one-line ``deb`` line or a deb822 stanza."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    enabled: bool = True

    def debian_main(self) -> str | None:
        """This entry's first usable URI if it is an enabled ``deb`` entry of Debian's main archive."""
        if not (self.enabled and "deb" in self.types and "main" in self.components):
            return None
        if not DEBIAN_RELEASES.intersection(self.suites):
            return None
        return next((uri.rstrip("/") for uri in self.uris if uri.startswith(SCHEMES)), None)


def source_files(apt_dir: Path) -> list[Path]:
    """apt's source files in the order apt reads them: sources.list, then sources.list.d by name."""
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(path for path in parts.iterdir() if path.suffix in (".list", ".sources"))
    return [path for path in files if path.is_file()]


def read_sources(path: Path) -> list[AptSource]:
    """The entries of one source file (deb822 for ``*.sources``, one-line otherwise); none if unreadable."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return []
    return list(_deb822_sources(text) if path.suffix == ".sources" else _one_line_sources(text))


def _one_line_sources(text: str) -> Iterator[AptSource]:
    """``deb [ options ] uri suite [component…]`` lines."""
    for line in text.splitlines():
        match = _ONE_LINE.match(line.split("#", 1)[0].strip())
        if match:
            yield AptSource(types=(match["type"],), uris=(match["uri"],), suites=(match["suite"],),
                            components=tuple(match["components"].split()))


def _deb822_sources(text: str) -> Iterator[AptSource]:
    """deb822 stanzas (``Types:``, ``URIs:``, ``Suites:``, ``Components:``, ``Enabled:``)."""
    for fields in _deb822_stanzas(text):
        yield AptSource(
            types=tuple(fields.get("types", "").split()),
            uris=tuple(fields.get("uris", "").split()),
            suites=tuple(fields.get("suites", "").split()),
            components=tuple(fields.get("components", "").split()),
            enabled=fields.get("enabled", "yes").strip().lower() != "no",
        )


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Field dicts (names lower-cased), one per blank-line separated stanza; comments skipped."""
    fields: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, name = {}, ""
        elif line[0] in " \t":
            if name:  # a continuation line (a multi-line Signed-By key)
                fields[name] += "\n" + line.strip()
        else:
            key, colon, value = line.partition(":")
            if colon:
                name = key.strip().lower()
                fields[name] = value.strip()
    if fields:
        yield fields
