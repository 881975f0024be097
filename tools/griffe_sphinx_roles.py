"""A Griffe extension for the docs build: Sphinx roles and literal blocks become Markdown.

The docstrings use Sphinx cross-reference roles (:class:`~llm_server.core.pipeline.Pipeline`),
which read well in an IDE and in ``help()``; mkdocstrings renders Markdown, where they would show
as raw text. Each role becomes an inline code span of what Sphinx would display: the last
component with ``~``, the explicit title of ``:meth:`title <target>```, else the target.

A reST literal block (a paragraph ending in ``::``, then an indented block) becomes a fenced
code block, marked ``python`` when it parses as Python (so the site highlights it), else
``text``.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj):`(~?)([^`<]+?)(?:\s*<([^>]+)>)?`"
)


_LITERAL = re.compile(r"(?<=\S)::\n")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _language(code: str) -> str:
    try:
        ast.parse(code)
    except SyntaxError:
        return "text"
    return "python"


def fence_literal_blocks(text: str) -> str:
    """Each ``...::`` paragraph's indented block as a fenced block (``python`` or ``text``)."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            base, end = _indent(line), i + 1
            while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
                end += 1
            while end > i + 1 and not lines[end - 1].strip():
                end -= 1
            code = textwrap.dedent("\n".join(lines[i + 1 : end])).strip("\n")
            if code:
                pad = line[:base]
                head = line.rstrip()[:-2].rstrip()
                if head.strip():
                    out.append(head + ":")
                fenced = [f"```{_language(code)}", *code.split("\n"), "```"]
                out += ["", *(pad + row if row else row for row in fenced)]
                i = end
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _display(match: re.Match[str]) -> str:
    tilde, text, target = match.group(1), match.group(2).strip(), match.group(3)
    if target is not None:  # :meth:`title <target>`
        return f"`{text}`"
    return f"`{text.rsplit('.', 1)[-1] if tilde else text}`"


class SphinxRoles(Extension):
    """Rewrite Sphinx roles in every docstring as Markdown code spans."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = fence_literal_blocks(_ROLE.sub(_display, obj.docstring.value))
            # a "text::" left (no indented block after it) reads as one colon
            obj.docstring.value = _LITERAL.sub(":\n", text)
