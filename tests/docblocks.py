"""The fenced code blocks of Markdown files, and running them as a reader would (for test_docs.py).

A block is run as written.  One that cannot run on a test machine by nature (a SLURM cluster, a
scheduler at ``tcp://head:8786``, ``pip install``) is marked by an HTML comment on the line
before its opening fence (blank lines between are allowed)::

    <!-- docs-test: skip (needs a SLURM cluster) -->

A skipped block is still parsed (``bash -n``, ``compile``).  Blocks of one file run in order in
one folder, Python blocks in one namespace, so a block may use what an earlier one made.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "DocBlockError", "blocks", "check_parses", "run_blocks", "shell_env"]

#: Fence info strings that are code to run, and how.
LANGUAGES = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash",
             "console": "console"}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
_SKIP = re.compile(r"^skip \((?P<reason>[^)]+)\)$")


class DocBlockError(AssertionError):
    """A code block of the docs failed, is malformed, or carries a marker the runner does not know."""


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    path: Path
    #: 1-based line of the opening fence
    line: int
    #: "python", "bash" or "console"; "" for a block that is not code to run (a file tree...)
    language: str
    code: str
    #: why the block is not run (its ``docs-test: skip`` marker), or None
    skip: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    def script(self) -> str:
        """The code to run: a console block's ``$ `` commands, any other block as it is."""
        if self.language != "console":
            return self.code
        return "\n".join(line[2:] for line in self.code.splitlines() if line.startswith("$ "))


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with its skip marker; unknown markers raise."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    pending: tuple[int, str] | None = None  # a marker waiting for its block
    i = 0
    while i < len(lines):
        marker = _MARKER.match(lines[i])
        opening = _FENCE.match(lines[i])
        if marker:
            if pending is not None:
                raise DocBlockError(f"{path.name}:{pending[0]}: docs-test marker not followed by a code block")
            skip = _SKIP.match(marker["body"])
            if not skip:
                raise DocBlockError(f"{path.name}:{i + 1}: unknown docs-test marker {marker['body']!r}; "
                                    "write <!-- docs-test: skip (why it cannot run in a test) -->")
            pending = (i + 1, skip["reason"])
        elif opening:
            fence, indent = opening["fence"], len(opening["indent"])
            closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
            end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
            if end is None:
                raise DocBlockError(f"{path.name}:{i + 1}: code block never closed")
            # a fence indented by n spaces (in a list item) has its code indented by up to n spaces
            code = "\n".join(line[min(indent, len(line) - len(line.lstrip(" "))):] for line in lines[i + 1:end])
            language = LANGUAGES.get(opening["info"].lower(), "")
            if pending is not None and not language:
                raise DocBlockError(f"{path.name}:{pending[0]}: docs-test marker before a block that is not "
                                    "code (python, bash, sh, console)")
            found.append(Block(Path(path), i + 1, language, code + "\n", pending[1] if pending else None))
            pending = None
            i = end
        elif pending is not None and lines[i].strip():
            raise DocBlockError(f"{path.name}:{pending[0]}: docs-test marker not directly before a code block")
        i += 1
    if pending is not None:
        raise DocBlockError(f"{path.name}:{pending[0]}: docs-test marker not followed by a code block")
    return found


def _python_source(block: Block) -> str:
    # Blank lines in front so that tracebacks give the Markdown file's own line numbers.
    return "\n" * block.line + block.code


def check_parses(block: Block) -> None:
    """Raise DocBlockError if a code block is not valid Python / shell syntax."""
    if block.language == "python":
        try:
            compile(_python_source(block), str(block.path), "exec")
        except SyntaxError as exc:
            raise DocBlockError(f"{block.where}: not valid Python: {exc}") from None
    elif block.language in ("bash", "console"):
        done = subprocess.run(["bash", "-n", "-c", block.script()], capture_output=True, text=True)
        if done.returncode:
            raise DocBlockError(f"{block.where}: not valid bash: {done.stderr.strip()}")


def shell_env(bin_dir: Path) -> dict[str, str]:
    """The environment of shell blocks: ``tilefuse`` is this checkout's, ``python`` this interpreter.

    A ``tilefuse`` script in ``bin_dir`` runs ``python -m tilefuse.cli`` with the interpreter
    running the tests and the source tree the tests import, whatever is installed elsewhere.
    """
    import tilefuse

    src = str(Path(tilefuse.__file__).resolve().parents[1])
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "tilefuse"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tilefuse.cli "$@"\n')
    script.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def run_blocks(path: Path, folder: Path, env: dict[str, str], timeout: float = 300) -> list[Block]:
    """Run a Markdown file's blocks in order in ``folder``; returns the blocks that ran.

    Python blocks run in this process, in one namespace, with ``folder`` as the current
    directory; shell blocks run with ``bash -e -o pipefail``.  The first failure raises
    DocBlockError naming the file and line.
    """
    namespace: dict = {"__name__": "__main__"}
    ran = []
    previous = os.getcwd()
    os.chdir(folder)
    try:
        for block in blocks(path):
            if not block.language:
                continue
            check_parses(block)
            if block.skip is not None:
                continue
            if block.language == "python":
                try:
                    exec(compile(_python_source(block), str(block.path), "exec"), namespace)
                except Exception as exc:
                    raise DocBlockError(f"{block.where}: the Python block failed: "
                                        f"{type(exc).__name__}: {exc}") from exc
            else:
                done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.script()], cwd=folder,
                                      env=env, capture_output=True, text=True, timeout=timeout)
                if done.returncode:
                    raise DocBlockError(f"{block.where}: the shell block exited with status {done.returncode}\n"
                                        f"--- block ---\n{block.code}--- stdout ---\n{done.stdout[-3000:]}"
                                        f"--- stderr ---\n{done.stderr[-3000:]}")
            ran.append(block)
    finally:
        os.chdir(previous)
    return ran
