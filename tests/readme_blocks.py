"""The code blocks of a Markdown file, with the ``readme-test`` markers that say how to test each.

A marker is an HTML comment on its own line just above a block's opening fence (several may be
stacked, one directive each), invisible on the rendered page:

    <!-- readme-test: skip REASON -->                 not run: it needs a network, a GPU, real data or a
                                                      server that runs until stopped
    <!-- readme-test: skip-line PREFIX :: REASON -->  lines starting with PREFIX are not run, for REASON
    <!-- readme-test: file NAME -->                   the block's text is written to NAME for the blocks after it
    <!-- readme-test: validate MODEL :: WHY -->       YAML checked against itm_core.config.MODEL instead of being run
    <!-- readme-test: before COMMAND -->              a set-up command run first (making a file the block names)
    <!-- readme-test: expect TEXT -->                 the block's output must contain TEXT

Shell blocks run as written with ``bash -e`` (every line must succeed); YAML and JSON blocks need a
``file`` or ``validate`` marker (else the test fails and says so); blocks without a language,
``text`` and ``mermaid`` (diagrams) are not code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

MARKER = re.compile(r"^\s*<!-- readme-test: (\S+)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
DIRECTIVES = {"skip", "skip-line", "file", "validate", "before", "expect"}


@dataclass
class Block:
    document: str
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    skip: str | None = None
    skip_lines: list[tuple[str, str]] = field(default_factory=list)
    file: str | None = None
    validate: tuple[str, str] | None = None
    before: list[str] = field(default_factory=list)
    expect: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"

    def commands(self) -> tuple[list[str], list[str]]:
        """The lines to run, and the reasons for the lines left out."""
        run, left_out = [], []
        for line in self.text.splitlines():
            reason = next((why for prefix, why in self.skip_lines if line.strip().startswith(prefix)), None)
            if reason is None:
                run.append(line)
            else:
                left_out.append(f"{line.strip()!r}: {reason}")
        return run, left_out


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def parse(path: Path, name: str | None = None) -> list[Block]:
    """Every fenced block of ``path`` with a language, and its markers; a misspelt marker is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: list[tuple[str, str]] = []
    n = 0
    while n < len(lines):
        marker = MARKER.match(lines[n])
        if marker:
            key, value = marker.groups()
            if key not in DIRECTIVES:
                raise ValueError(
                    f"{path}:{n + 1}: unknown readme-test directive {key!r}; known: {', '.join(sorted(DIRECTIVES))}"
                )
            pending.append((key, value))
            n += 1
            continue
        fence = FENCE.match(lines[n])
        if not fence:
            if lines[n].strip():
                pending = []  # markers belong to the block right below them
            n += 1
            continue
        indent, language = fence.groups()
        end = n + 1
        while end < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[end]):
            end += 1
        body = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[n + 1 : end])
        block = Block(name or path.name, n + 1, language.lower(), body + "\n")
        for key, value in pending:
            if key == "skip":
                block.skip = value
            elif key == "skip-line":
                prefix, _, why = value.partition("::")
                block.skip_lines.append((prefix.strip(), why.strip()))
            elif key == "file":
                block.file = value
            elif key == "validate":
                model, _, why = value.partition("::")
                block.validate = (model.strip(), why.strip())
            elif key == "before":
                block.before.append(value)
            elif key == "expect":
                block.expect.append(_unquote(value))
        pending = []
        if language and language.lower() not in ("text", "mermaid"):  # a diagram is not code
            blocks.append(block)
        n = end + 1
    return blocks
