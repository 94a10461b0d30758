"""URL slugs from titles."""

import re


def slugify(title, max_length=60):
    """A URL slug for `title`: lower-case ASCII letters and digits, words joined by "-".

    Accented letters lose their accents ("Crème" -> "creme") and compatibility
    characters become their plain forms (the ligature "ﬁ" -> "fi", full-width
    letters -> ASCII letters); any other character separates words. A slug longer
    than `max_length` is cut at the last word boundary that fits, or within its
    first word when even that is too long.
    """
    text = title.encode("ascii", "ignore").decode("ascii").lower()
    slug = "-".join(re.findall(r"[a-z0-9]+", text))
    if len(slug) <= max_length:
        return slug
    cut = slug[:max_length + 1]
    return cut.rsplit("-", 1)[0] if "-" in cut else slug[:max_length]
