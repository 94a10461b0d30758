"""Hidden tests: unittest tests the command user never sees, run against its code as a separate grader uid.

Runs inside the container as part of the agent: stdlib only, Python 3.8+.
`run_hidden_tests` hands the tests and the candidate files (from `collect_files`) to
`grading_harness.py`, run as the grader uid, and counts the verdicts itself
(`grading_harness.py` says why the candidate code cannot forge them).
"""

from __future__ import annotations

import ast
import base64
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..runtime.processes import RUNNER, ProgramResult, program_env

#: The harness run as the grader uid; it is readable by every uid (the agent package is), and holds no secret.
HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grading_harness.py")


OUTCOMES = ("passed", "failed", "error", "timeout", "skipped", "not_run")


@dataclass
class TestReport:
    """The verdict of every hidden test, as the harness reported it; tests it did not report did not pass."""

    __test__ = False  # not a pytest test class

    outcomes: Dict[str, str]  # test id (file stem.Class.method) -> one of OUTCOMES
    problem: Optional[str] = None  # why the harness gave no verdicts, when it did not
    duration: float = 0.0  # seconds
    counts: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {kind: sum(1 for o in self.outcomes.values() if o == kind) for kind in OUTCOMES}

    @property
    def passed(self) -> int:
        return self.counts["passed"]

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def score(self) -> float:
        """The fraction of hidden tests that passed (0.0 when there are none)."""
        return self.passed / self.total if self.total else 0.0

    def summary(self) -> str:
        parts = ["%d of %d hidden tests passed" % (self.passed, self.total)]
        parts += ["%d %s" % (n, kind) for kind, n in self.counts.items() if n and kind != "passed"]
        text = ", ".join(parts) + "."
        return text + (" The grader reported: %s" % self.problem if self.problem else "")


def hidden_test_ids(tests: Dict[str, str]) -> List[str]:
    """The ids of the tests in `tests` ({file name: source}): `test*` methods of top-level classes.

    Read from the source with `ast`, without running it, so that a harness that loads fewer tests
    (a syntax error, a crash) cannot shrink the denominator.
    """
    ids = []
    for name, source in sorted(tests.items()):
        stem = name[:-3] if name.endswith(".py") else name
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            raise ValueError("hidden test file %s does not parse: %s" % (name, exc)) from None
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                ids += ["%s.%s.%s" % (stem, node.name, item.name) for item in node.body
                        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test")]
    return ids


async def run_hidden_tests(tests: Dict[str, str], files: Dict[str, bytes], *, uid: int, gid: int,
                           call_timeout: float = 3.0, budget: float = 45.0, max_timeouts: int = 3) -> TestReport:
    """Run the unittest files `tests` against the candidate `files` as the grader `uid`; never raises for them.

    `tests` are {file name: source}, from a place only the agent can read; they reach the harness on its
    stdin and are never written to disk. `files` (from `collect_files`) are written to a fresh 0700 folder
    of `uid`. Each call into the candidate code may take `call_timeout` s; the run stops after `budget` s
    or `max_timeouts` timed-out tests (the rest do not pass). `uid` must not be the command user's.
    """
    if uid in (0, RUNNER.limits.uid):
        raise ValueError("hidden tests must run as their own uid, not %d" % uid)
    expected = hidden_test_ids(tests)
    payload = {
        "tests": tests,
        "files": {rel: base64.b64encode(data).decode() for rel, data in files.items()},
        "call_timeout": call_timeout, "budget": budget, "max_timeouts": max_timeouts,
    }
    argv = [sys.executable, "-I", "-B", HARNESS, "harness"]
    result = await RUNNER.run_program(argv, uid=uid, gid=gid, stdin=json.dumps(payload).encode(),
                                      timeout=budget + 15.0, env=program_env())
    verdicts, problem = _verdicts(result)
    outcomes = {test_id: verdicts.get(test_id, "not_run") for test_id in expected}
    return TestReport(outcomes, problem, result.duration)


def _verdicts(result: ProgramResult) -> Tuple[Dict[str, str], Optional[str]]:
    """The harness's verdicts, or none and why: only a harness that ended normally is believed."""
    if result.timed_out:
        return {}, "the grader did not finish in time"
    if result.exit_code != 0:
        return {}, "the grader ended with status %s: %s" % (
            result.exit_code, result.stderr.decode(errors="replace")[-300:])
    try:
        answer = json.loads(result.stdout)
        verdicts = {str(k): str(v) for k, v in answer["outcomes"].items() if v in OUTCOMES}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}, "the grader gave no readable verdicts"
    return verdicts, None

