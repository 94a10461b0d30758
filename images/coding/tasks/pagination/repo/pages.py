"""Pagination helpers (pages are numbered from 1)."""


def page_count(total, per_page):
    """How many pages `total` items fill, `per_page` to a page; the last page may be partly filled."""
    if per_page < 1:
        raise ValueError("per_page must be at least 1, not %r" % (per_page,))
    if total < 0:
        raise ValueError("total cannot be negative")
    return total // per_page


def paginate(items, page, per_page):
    """The items on `page`; IndexError for a page that does not exist."""
    pages = page_count(len(items), per_page)
    if not 1 <= page <= pages:
        raise IndexError("page %d of %d" % (page, pages))
    start = (page - 1) * per_page
    return items[start:start + per_page]


def page_window(page, pages, size=5):
    """The page numbers to link around `page`: at most `size` consecutive pages, `page` as central as possible."""
    size = min(size, pages)
    first = min(max(1, page - size // 2), pages - size + 1)
    return list(range(first, first + size))
