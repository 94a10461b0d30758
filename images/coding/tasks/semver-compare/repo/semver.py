"""Version numbers of the form MAJOR.MINOR.PATCH."""

PARTS = ("major", "minor", "patch")


def parse(version):
    """(major, minor, patch) as integers; a leading "v" is allowed and missing parts are 0.

    parse("v1.2") == (1, 2, 0). ValueError for anything else.
    """
    text = version.strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    parts = text.split(".")
    if not 1 <= len(parts) <= 3 or not all(part.isdigit() and part.isascii() for part in parts):
        raise ValueError("not a version: %r" % (version,))
    return tuple(parts + ["0"] * (3 - len(parts)))


def compare(a, b):
    """-1 if version `a` comes before `b`, 1 if after, 0 if they are the same version."""
    left, right = parse(a), parse(b)
    return (left > right) - (left < right)


def latest(versions):
    """The highest of `versions`, as written (the first one given among equal versions)."""
    if not versions:
        raise ValueError("no versions")
    best = versions[0]
    for version in versions[1:]:
        if compare(version, best) > 0:
            best = version
    return best


def bump(version, part="patch"):
    """The next version: the given part + 1, the parts after it reset to 0."""
    index = PARTS.index(part)
    numbers = [int(n) for n in parse(version)]
    numbers[index] += 1
    numbers[index + 1:] = [0] * (2 - index)
    return "%d.%d.%d" % tuple(numbers)
