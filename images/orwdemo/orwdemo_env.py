"""`orwdemo`: arithmetic and string puzzles, written purely against openreward's authoring API.

Nothing here knows about orsbox: the same class runs under `openreward.environments.Server`.
Task objects are public (clients list them); the expected answers stay in `ANSWERS`, in this
process, in a file only root can read inside the sandbox.
"""

from __future__ import annotations

import ast
import operator
from typing import Any, Callable, Dict, List, Union

from openreward.environments import (
    Environment,
    JSONObject,
    ListToolsOutput,
    Split,
    TextBlock,
    ToolOutput,
    ToolSpec,
    tool,
)
from pydantic import BaseModel, Field

TASKS: Dict[str, List[Dict[str, str]]] = {
    "train": [
        {"id": "arith-0", "kind": "arithmetic", "question": "What is 17 * 23?"},
        {"id": "arith-1", "kind": "arithmetic", "question": "What is 1024 - 387?"},
        {"id": "arith-2", "kind": "arithmetic", "question": "What is 144 / 12 + 7?"},
        {"id": "arith-3", "kind": "arithmetic", "question": "What is 2 ** 10 - 1?"},
        {"id": "arith-4", "kind": "arithmetic", "question": "What is (45 + 55) * 3 - 12?"},
    ],
    "test": [
        {"id": "text-0", "kind": "string", "question": "Reverse the word 'openreward'."},
        {"id": "text-1", "kind": "string", "question": "How many vowels (a, e, i, o, u) are in 'environment'?"},
        {"id": "text-2", "kind": "string", "question": "Sort the letters of 'sandbox' alphabetically."},
        {"id": "text-3", "kind": "string",
         "question": "What is the fifth word of 'the quick brown fox jumps over the lazy dog'?"},
        {"id": "text-4", "kind": "string", "question": "Write 'Hello World' in upper case."},
    ],
}

ANSWERS: Dict[str, str] = {
    "arith-0": "391",
    "arith-1": "637",
    "arith-2": "19",
    "arith-3": "1023",
    "arith-4": "288",
    "text-0": "drawernepo",
    "text-1": "4",
    "text-2": "abdnosx",
    "text-3": "jumps",
    "text-4": "HELLO WORLD",
}

HINTS: Dict[str, str] = {
    "arith-2": "Division comes before addition.",
    "arith-4": "Work out the parentheses first.",
    "text-2": "The word has seven letters and no repeats.",
}


class SubmitInput(BaseModel):
    answer: str = Field(min_length=1, max_length=200, description="Your final answer, as plain text.")


class CalculatorInput(BaseModel):
    expression: str = Field(max_length=200, description="An arithmetic expression, e.g. '(3 + 4) * 2'.")


Number = Union[int, float]
_OPERATORS: Dict[type, Callable[..., Number]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.USub: operator.neg, ast.UAdd: operator.pos,
}


def evaluate(node: ast.AST) -> Number:
    """Evaluate an arithmetic expression tree: numbers and + - * / // % ** only."""
    if isinstance(node, ast.Expression):
        return evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = evaluate(node.left), evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](evaluate(node.operand))
    raise ValueError("only numbers and + - * / // % ** are allowed")


def same_answer(given: str, expected: str) -> bool:
    """Exact text after trimming; numbers compare by value ('19.0' is '19')."""
    given = given.strip()
    if given == expected:
        return True
    try:
        return float(given) == float(expected)
    except ValueError:
        return False


class DemoEnv(Environment):
    """Answer a short arithmetic or string question, then submit it."""

    def __init__(self, task_spec: JSONObject = {}, secrets: Dict[str, str] = {}) -> None:  # noqa: B006
        super().__init__(task_spec, secrets)
        task_id = str(task_spec.get("id", ""))
        if task_id not in ANSWERS:
            raise ValueError(f"unknown task {task_id!r}")
        self.task_id = task_id
        self.calculations = 0

    @classmethod
    def list_splits(cls) -> List[Split]:
        return [Split(name="train", type="train"), Split(name="test", type="test")]

    @classmethod
    def list_tasks(cls, split: str) -> List[JSONObject]:
        return list(TASKS[split])

    async def setup(self) -> None:
        self.calculations = 0

    def get_prompt(self) -> List[TextBlock]:
        question = str(self.task_spec["question"])
        return [TextBlock(text=f"{question}\nWhen you are sure, call submit with your answer.")]

    def list_task_tools(self) -> ListToolsOutput:
        if self.task_id not in HINTS:
            return ListToolsOutput(tools=[])
        return ListToolsOutput(tools=[ToolSpec(name="hint", description="A hint for this task.", input_schema=None)])

    @tool(concurrent=True)
    def calculator(self, params: CalculatorInput) -> ToolOutput:
        """Evaluate an arithmetic expression (numbers and + - * / // % ** only)."""
        self.calculations += 1
        try:
            value: Any = evaluate(ast.parse(params.expression, mode="eval"))
        except (SyntaxError, ValueError, ArithmeticError) as exc:
            return ToolOutput(blocks=[TextBlock(text=f"error: {exc}")], metadata={"ok": False})
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return ToolOutput(blocks=[TextBlock(text=str(value))], metadata={"ok": True})

    @tool(shared=False)
    def hint(self) -> ToolOutput:
        """A hint for this task."""
        return ToolOutput(blocks=[TextBlock(text=HINTS.get(self.task_id, "No hint for this task."))])

    @tool(exclusive=True)
    async def submit(self, params: SubmitInput) -> ToolOutput:
        """Submit your final answer; this ends the episode."""
        correct = same_answer(params.answer, ANSWERS[self.task_id])
        verdict = "Correct." if correct else "Not correct."
        return ToolOutput(
            blocks=[TextBlock(text=verdict)],
            metadata={"task_id": self.task_id, "correct": correct, "calculations": self.calculations},
            reward=1.0 if correct else 0.0,
            finished=True,
        )
