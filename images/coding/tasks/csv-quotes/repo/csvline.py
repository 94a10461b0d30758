"""A minimal CSV reader: RFC 4180 quoting, one record per line."""


def parse_line(line, delimiter=","):
    """The fields of one CSV line.

    A field may be quoted with double quotes; inside quotes the delimiter is an
    ordinary character and two double quotes ("") stand for one. ValueError when
    a quote is left open.
    """
    fields = []
    field = []
    quoted = False
    i = 0
    while i < len(line):
        ch = line[i]
        if quoted:
            if ch == '"':
                quoted = False
            else:
                field.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == delimiter:
            fields.append("".join(field))
            field = []
        else:
            field.append(ch)
        i += 1
    if quoted:
        raise ValueError("unterminated quoted field in %r" % (line,))
    fields.append("".join(field))
    return fields


def parse(text, delimiter=","):
    """The records of `text`, one per non-empty line."""
    return [parse_line(line, delimiter) for line in text.splitlines() if line.strip()]
