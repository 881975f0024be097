"""A Griffe extension for the docs build: Sphinx roles in docstrings become Markdown code.

The docstrings use Sphinx cross-reference roles (:class:`~llm_server.core.pipeline.Pipeline`),
which read well in an IDE and in ``help()``; mkdocstrings renders Markdown, where they would show
as raw text. Each role becomes an inline code span of what Sphinx would display: the last
component with ``~``, the explicit title of ``:meth:`title <target>```, else the target.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj):`(~?)([^`<]+?)(?:\s*<([^>]+)>)?`"
)


_LITERAL = re.compile(r"(?<=\S)::\n")


def _display(match: re.Match[str]) -> str:
    tilde, text, target = match.group(1), match.group(2).strip(), match.group(3)
    if target is not None:  # :meth:`title <target>`
        return f"`{text}`"
    return f"`{text.rsplit('.', 1)[-1] if tilde else text}`"


class SphinxRoles(Extension):
    """Rewrite Sphinx roles in every docstring as Markdown code spans."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _ROLE.sub(_display, obj.docstring.value)
            # reST's "text::" introduces a literal block; in Markdown the indented block is
            # code already, and the colon reads as one.
            obj.docstring.value = _LITERAL.sub(":\n", text)
