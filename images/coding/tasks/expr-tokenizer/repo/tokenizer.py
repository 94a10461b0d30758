"""A tokenizer for arithmetic expressions."""

OPERATORS = "+-*/%^(),"


def tokenize(text, tokens=[]):
    """The tokens of `text`, appended to `tokens` (a new list when none is given), which is returned.

    Numbers become ("NUM", int or float), identifiers ("NAME", str), operators and
    parentheses ("OP", str). Whitespace separates tokens; any other character raises
    ValueError.
    """
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch.isdigit() or (ch == "." and text[i + 1:i + 2].isdigit()):
            end = _scan(text, i, lambda c: c.isdigit() or c == ".")
            literal = text[i:end]
            if literal.count(".") > 1:
                raise ValueError("bad number %r at %d" % (literal, i))
            tokens.append(("NUM", float(literal) if "." in literal else int(literal)))
            i = end
        elif ch.isalpha() or ch == "_":
            end = _scan(text, i, lambda c: c.isalnum() or c == "_")
            tokens.append(("NAME", text[i:end]))
            i = end
        elif ch in OPERATORS:
            tokens.append(("OP", ch))
            i += 1
        else:
            raise ValueError("unexpected character %r at %d" % (ch, i))
    return tokens


def _scan(text, start, accept):
    """The index after the run of characters from `start` that `accept` accepts."""
    end = start
    while end < len(text) and accept(text[end]):
        end += 1
    return end
