"""Sessions: every session's lifecycle, from `/create` to the removal of its sandbox.

    manager.py    SessionManager: the one object the routes talk to
    registry.py   live sessions, ended ids (410), admission (429) and start queues
    lifecycle.py  start (sandbox, channel, setup), fail, end, release
    calls.py      tool calls, kept for reconnects
    reaper.py     idle and lifetime reaping, orphan sweeps, the engine watch
    adoption.py   serving again what a previous run left running
    tasks.py      the tracked background tasks, ended in close()
"""

from .manager import SessionManager
from .session import CallRecord, Session, State

__all__ = ["CallRecord", "Session", "SessionManager", "State"]
