"""Greedy text wrapping."""


def wrap(text, width):
    """The words of `text` in lines of at most `width` characters, words separated by one space.

    Lines break at whitespace only; a word longer than `width` gets a line of its own, unbroken.
    """
    if width < 1:
        raise ValueError("width must be at least 1, not %r" % (width,))
    lines = []
    current = ""
    for word in text.split():
        if not current:
            current = word
        elif len(current) + len(word) <= width:
            current += " " + word
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def fill(text, width):
    """`wrap` joined into one string with newlines."""
    return "\n".join(wrap(text, width))
