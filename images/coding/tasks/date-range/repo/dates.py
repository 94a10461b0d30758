"""Date helpers for reports."""

import calendar
import datetime


def parse_date(text):
    """The date of an ISO 8601 string, "2024-02-29"; ValueError otherwise."""
    return datetime.date.fromisoformat(text.strip())


def days_between(start, end):
    """Whole days from `start` to `end` (negative when `end` comes first)."""
    return (end - start).days


def date_range(start, end, step_days=1):
    """The dates from `start` to `end`, both included, `step_days` apart.

    The last date is `end` only when it falls on a step. Empty when `end` is before `start`.
    """
    if step_days < 1:
        raise ValueError("step_days must be at least 1, not %r" % (step_days,))
    days = days_between(start, end)
    return [start + datetime.timedelta(days=offset) for offset in range(0, days, step_days)]


def month_range(year, month):
    """Every date of a month."""
    last = calendar.monthrange(year, month)[1]
    return date_range(datetime.date(year, month, 1), datetime.date(year, month, last))
