"""Regenerate ``__all__`` and the TYPE_CHECKING imports of llm_server/__init__.py.

Run after adding a name to ``_EXPORTS``, then ``ruff check --fix`` and ``ruff format`` the file.
"""

import sys
from pathlib import Path

sys.path.insert(0, "src")
import llm_server

path = Path("src/llm_server/__init__.py")
text = path.read_text()
exports = dict(llm_server._EXPORTS)
block = "if TYPE_CHECKING:\n" + "".join(
    f"    from {module} import {name} as {name}\n"
    for name, module in sorted(exports.items(), key=lambda item: (item[1], item[0]))
)
text = text[: text.index("if TYPE_CHECKING:\n    from")] + block
start = text.index("__all__ = [")
end = text.index("]\n", start) + 2
names = "".join(f'    "{name}",\n' for name in sorted(exports))
text = (
    text[:start]
    + "__all__ = [  # sorted; tests/test_public_api.py keeps it equal to _EXPORTS\n"
    + names
    + "]\n"
    + text[end:]
)
path.write_text(text)
