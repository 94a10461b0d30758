"""The `bash` example environment: small shell tasks in /workspace, graded on submit.

Task objects are public (clients list them); the data each task needs is
generated in `setup()` from the task id, and the expected answers stay in this
process's memory. This file is installed root-only (0700), so commands, which
run as uid 1000, can read neither the answers nor how they are derived.
"""

from __future__ import annotations

import random
import shlex
from typing import Awaitable, Callable, Dict, List, Optional

from orsbox.agent import TaskTable, TextBlock, ToolOutput, tool
from orsbox.agent.toolsets import ShellTools

TASKS: Dict[str, List[Dict[str, str]]] = {
    "train": [
        {"id": "train-0", "instruction": "Create the file /workspace/hello.txt containing exactly one line: "
         "hello world"},
        {"id": "train-1", "instruction": "/workspace/app.log is a log file. Write the number of lines that contain "
         "the word ERROR to /workspace/answer.txt (just the number)."},
        {"id": "train-2", "instruction": "Write an executable script /workspace/greet.sh that prints "
         "'Hello, NAME!' where NAME is its first argument, e.g. `./greet.sh Ada` prints `Hello, Ada!`."},
        {"id": "train-3", "instruction": "/workspace/numbers.txt holds one integer per line. Write them sorted in "
         "ascending numeric order, one per line, to /workspace/sorted.txt."},
        {"id": "train-4", "instruction": "/workspace/numbers.txt holds one integer per line. Write their sum to "
         "/workspace/answer.txt (just the number)."},
    ],
    "test": [
        {"id": "test-0", "instruction": "Rename every .txt file in /workspace/docs to the same name with the "
         "extension .md (notes.txt -> notes.md). Leave the other files alone."},
        {"id": "test-1", "instruction": "/workspace/words.txt holds words separated by spaces and newlines. Write "
         "the word that occurs most often to /workspace/answer.txt (just the word)."},
        {"id": "test-2", "instruction": "/workspace/access.log is a web server log whose first field is the client "
         "IP address. Write the number of distinct client IP addresses to /workspace/answer.txt."},
        {"id": "test-3", "instruction": "Create a gzip-compressed tar archive /workspace/site.tar.gz that contains "
         "the directory site/ from /workspace (paths inside the archive start with site/)."},
        {"id": "test-4", "instruction": "In /workspace/config.ini, replace every occurrence of the word foo with "
         "bar, in place. Do not change anything else."},
    ],
}

Files = Dict[str, str]
Grader = Callable[["BashEnvironment"], Awaitable[bool]]


class BashEnvironment(ShellTools, TaskTable):
    """Shell tasks in a sandboxed /workspace, worked on with a persistent shell (`bash`, `restart_shell`)."""

    task_table = TASKS

    def __init__(self, task: Dict[str, str], secrets: Optional[Dict[str, str]] = None) -> None:
        super().__init__(task, secrets)
        self.rng = random.Random(task["id"])
        self.expected: object = None

    async def setup(self) -> None:
        files, self.expected = BUILDERS[self.task["id"]](self.rng)
        for path, content in files.items():
            await self.write_file(path, content)

    async def write_file(self, path: str, content: str) -> None:
        """Create a workspace file as the command user (the agent itself cannot write there)."""
        quoted = shlex.quote(path)
        command = "mkdir -p -- \"$(dirname %s)\" && printf '%%s' %s > %s" % (quoted, shlex.quote(content), quoted)
        result = await self.run(command, timeout=30)
        if result.exit_code != 0:
            raise RuntimeError("could not write %s: %s" % (path, result.output))

    def fork_state(self) -> Dict[str, object]:
        """A copy made by /fork grades against the same answer (kept in memory, never in the files)."""
        return {"expected": self.expected}

    def restore_state(self, state: Dict[str, object]) -> None:
        self.expected = state.get("expected")

    def get_prompt(self) -> List[TextBlock]:
        return [TextBlock(self.task["instruction"] + "\n\nUse the bash tool to work in /workspace, "
                          "then call submit to have your work graded.")]

    @tool(exclusive=True)
    async def submit(self) -> ToolOutput:
        """Submit the workspace for grading. Ends the episode."""
        passed = await GRADERS[self.task["id"]](self)
        verdict = "correct" if passed else "incorrect"
        return ToolOutput(blocks=[TextBlock("Submitted: %s." % verdict)], metadata={"passed": passed},
                          reward=1.0 if passed else 0.0, finished=True)

    async def read(self, command: str) -> str:
        """Output of a read-only check command, run as the command user."""
        return (await self.run(command, timeout=20)).output


# ---------------------------------------------------------------- task data


def _log_lines(rng: random.Random) -> Files:
    levels = ["INFO", "DEBUG", "WARN", "ERROR"]
    lines = ["2026-01-%02d %s worker-%d: event %d" % (rng.randint(1, 28), rng.choice(levels), rng.randint(1, 9), i)
             for i in range(rng.randint(150, 300))]
    return {"/workspace/app.log": "\n".join(lines) + "\n"}


def _numbers(rng: random.Random) -> List[int]:
    return [rng.randint(-500, 5000) for _ in range(rng.randint(40, 80))]


def build_train0(rng: random.Random) -> tuple:
    return {}, "hello world"


def build_train1(rng: random.Random) -> tuple:
    files = _log_lines(rng)
    return files, str(sum("ERROR" in line for line in files["/workspace/app.log"].splitlines()))


def build_train2(rng: random.Random) -> tuple:
    return {}, rng.choice(["Ada", "Grace", "Linus", "Barbara"]) + str(rng.randint(10, 99))


def build_train3(rng: random.Random) -> tuple:
    numbers = _numbers(rng)
    return {"/workspace/numbers.txt": "\n".join(map(str, numbers)) + "\n"}, "\n".join(map(str, sorted(numbers)))


def build_train4(rng: random.Random) -> tuple:
    numbers = _numbers(rng)
    return {"/workspace/numbers.txt": "\n".join(map(str, numbers)) + "\n"}, str(sum(numbers))


def build_test0(rng: random.Random) -> tuple:
    names = rng.sample(["notes", "todo", "readme", "plan", "ideas", "draft", "log"], 4)
    files = {"/workspace/docs/%s.txt" % n: "%s\n" % n for n in names}
    files["/workspace/docs/keep.csv"] = "a,b\n"
    return files, sorted(["%s.md" % n for n in names] + ["keep.csv"])


def build_test1(rng: random.Random) -> tuple:
    vocab = ["apple", "river", "stone", "cloud", "ember", "maple", "quartz"]
    winner = rng.choice(vocab)
    words = [w for w in vocab for _ in range(rng.randint(3, 9)) if w != winner] + [winner] * 12
    rng.shuffle(words)
    lines = [" ".join(words[i:i + 7]) for i in range(0, len(words), 7)]
    return {"/workspace/words.txt": "\n".join(lines) + "\n"}, winner


def build_test2(rng: random.Random) -> tuple:
    ips = ["10.0.%d.%d" % (rng.randint(0, 3), rng.randint(1, 254)) for _ in range(rng.randint(8, 20))]
    lines = ['%s - - [01/Jan/2026] "GET /%d HTTP/1.1" 200' % (rng.choice(ips), i) for i in range(200)]
    seen = {line.split()[0] for line in lines}
    return {"/workspace/access.log": "\n".join(lines) + "\n"}, str(len(seen))


def build_test3(rng: random.Random) -> tuple:
    files = {"/workspace/site/index.html": "<h1>%d</h1>\n" % rng.randint(1, 999),
             "/workspace/site/css/style.css": "body { margin: 0 }\n"}
    return files, ["site/css/style.css", "site/index.html"]


def build_test4(rng: random.Random) -> tuple:
    content = "[main]\nname = foo\nfood = foodstuff\npath = /srv/foo/data\n[extra]\nmode = foo-bar\n"
    return {"/workspace/config.ini": content}, content.replace("foo", "bar")


BUILDERS = {
    "train-0": build_train0, "train-1": build_train1, "train-2": build_train2,
    "train-3": build_train3, "train-4": build_train4,
    "test-0": build_test0, "test-1": build_test1, "test-2": build_test2,
    "test-3": build_test3, "test-4": build_test4,
}


# ---------------------------------------------------------------- graders


async def grade_file_equals(env: BashEnvironment, path: str) -> bool:
    return (await env.read("cat -- %s" % path)).strip() == str(env.expected).strip()


async def grade_train0(env: BashEnvironment) -> bool:
    return (await env.read("cat /workspace/hello.txt")) == "hello world\n"


async def grade_train2(env: BashEnvironment) -> bool:
    name = str(env.expected)
    out = await env.read("test -x /workspace/greet.sh && cd / && /workspace/greet.sh %s" % shlex.quote(name))
    return out.strip() == "Hello, %s!" % name


async def grade_test0(env: BashEnvironment) -> bool:
    return (await env.read("ls -1 /workspace/docs")).split() == env.expected


async def grade_test3(env: BashEnvironment) -> bool:
    out = await env.read("tar -tzf /workspace/site.tar.gz")
    listed = {line.strip().lstrip("./") for line in out.splitlines()}
    return all(path in listed for path in env.expected)  # type: ignore[union-attr]


async def grade_test4(env: BashEnvironment) -> bool:
    return (await env.read("cat /workspace/config.ini")) == env.expected


GRADERS: Dict[str, Grader] = {
    "train-0": grade_train0,
    "train-1": lambda env: grade_file_equals(env, "/workspace/answer.txt"),
    "train-2": grade_train2,
    "train-3": lambda env: grade_file_equals(env, "/workspace/sorted.txt"),
    "train-4": lambda env: grade_file_equals(env, "/workspace/answer.txt"),
    "test-0": grade_test0,
    "test-1": lambda env: grade_file_equals(env, "/workspace/answer.txt"),
    "test-2": lambda env: grade_file_equals(env, "/workspace/answer.txt"),
    "test-3": grade_test3,
    "test-4": grade_test4,
}
