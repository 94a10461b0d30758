"""Grading helpers: files across the uid boundary, and hidden tests run as another uid.

Runs inside the container as part of the agent: stdlib only, Python 3.8+.

- `write_files` / `collect_files` (`files`): the command user's files, written and read as that user;
- `run_hidden_tests` (`hidden_tests`): unittest tests the command user never sees, run against the
  collected code as a separate grader uid by `grading_harness.py`, the verdicts counted by the agent;
- `run_program`: any argv as any uid/gid, with stdin, a timeout and capped stdout/stderr, and
  afterwards every process of that uid killed (the agent's runner's, `runtime.processes`).
"""

from ..runtime.processes import RUNNER, SAFE_PATH, ProgramResult, program_env
from .files import collect_files, write_files
from .hidden_tests import HARNESS, OUTCOMES, TestReport, hidden_test_ids, run_hidden_tests

#: Run a program as any uid/gid: the agent's runner's `run_program`.
run_program = RUNNER.run_program

__all__ = [
    "HARNESS",
    "OUTCOMES",
    "SAFE_PATH",
    "ProgramResult",
    "TestReport",
    "collect_files",
    "hidden_test_ids",
    "program_env",
    "run_hidden_tests",
    "run_program",
    "write_files",
]
