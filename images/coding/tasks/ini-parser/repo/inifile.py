"""A small INI reader: sections, key = value pairs, comments."""


class ParseError(ValueError):
    """A line that is neither a section header, a key = value pair, a comment nor blank."""


def parse(text):
    """Parse INI `text` into {section: {key: value}}.

    Pairs before the first section header belong to the section "DEFAULT". Lines
    starting with # or ; are comments. Keys are lower-cased; whitespace around
    section names, keys and values is stripped. A value may contain any character.
    A key given twice in a section keeps its last value.
    """
    config = {"DEFAULT": {}}
    section = config["DEFAULT"]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = config.setdefault(line[1:-1].strip(), {})
            continue
        if "=" not in line:
            raise ParseError("line %d: expected key = value, got %r" % (number, raw))
        parts = line.split("=")
        key, value = parts[0], parts[1]
        if not key.strip():
            raise ParseError("line %d: empty key" % number)
        section[key.strip().lower()] = value.strip()
    return config


def get(config, section, key, default=None):
    """The value of `key` in `section`, else in "DEFAULT", else `default`."""
    key = key.lower()
    if key in config.get(section, {}):
        return config[section][key]
    return config["DEFAULT"].get(key, default)


def get_int(config, section, key, default=None):
    """Like `get`, converted to int; ValueError if the value is not an integer."""
    value = get(config, section, key)
    return default if value is None else int(value)
