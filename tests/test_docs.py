"""Every runnable block of README.md and of the docs/ pages runs: the documentation cannot rot.

A page is read like a tutorial, top to bottom, in one session: a temporary copy of a fresh
clone's root (``examples/``, ``config/``, the lock; ``.venv`` links to this checkout's), with
an environment holding no virtualenv on ``PATH`` and none of the library's variables.

- ```python blocks run in a fresh interpreter (``.venv/bin/python`` is the test's own). A
  block marked ``<!-- continues the block above -->`` runs with the blocks before it on its
  page. A block after prose saying "save this as `NAME.py`" is saved under that name in the
  session's folder (later commands use it). A block that defines a FastAPI ``app`` with
  ``POST /predict`` is also driven: its lifespan runs and one request must succeed. A
  ```text block marked ``<!-- output -->`` right after it is its expected standard output.
- ```bash / ```sh lines and ```console ``$`` commands run in ``bash`` from the session's
  folder; each must succeed, and a console command's output lines are checked (JSON
  structurally; ``...`` stands for anything, ``{...}`` for any object; trace ids, timings and
  timestamps only by type). ``export NAME=VALUE`` sets the session's environment.
- A command that serves (it ends in ``&``, or runs ``examples/serve.py``, ``uvicorn``,
  ``-m llm_server.testing``, ``examples/fleet_app/run.py`` or ``redis-server``) is started in
  the background and waited for until its port answers; a later server on the same port
  stops it first (the reader's Ctrl-C), and all are stopped when the page ends.
- Ports are the reader's (8000, 8001, ...) rewritten to free ones, so pages never collide
  with anything else on the machine; Redis on 6379 and PostgreSQL on 5432, which a page
  assumes installed and running, are private servers that fixtures start.
- A block that cannot run here says so in the Markdown, right before it:
  ``<!-- not run: REASON -->``; a set-up chain whose install steps cannot run (``python3 -m
  venv .venv && ... && COMMAND``) is marked ``<!-- set-up not run: REASON -->`` and only its
  last command runs. ``test_docs_summary`` counts and prints what ran and what did not.

The newcomer's path (README, the home page, Getting started) and the concept pages run in the
default suite; the how-to pages, each a session of servers and fresh interpreters (5-20 s
apiece, ~2 minutes together), are marked ``slow`` and run with ``pytest -m slow`` (CI runs
both).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUNNABLE = {"python", "bash", "sh", "console", "shell"}
CONTINUES = "<!-- continues the block above -->"
NOT_RUN = re.compile(r"<!-- not run: ([^>]+?) -->\s*$")  # right before the block
SETUP_NOT_RUN = re.compile(r"<!-- set-up not run: ([^>]+?) -->\s*$")
SAVE_AS = re.compile(r"[Ss]ave (?:[\w ]{0,20} )?as `([\w./-]+\.py)`")
FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```[ \t]*$", re.S | re.M)
OUTPUT = re.compile(r"\s*<!-- output -->\n```text\n(.*?)^```", re.S | re.M)
SERVER = re.compile(
    r"examples/serve\.py|\buvicorn\b|-m llm_server\.testing|examples/fleet_app/run\.py"
    r"|\bredis-server\b"
)
# Install steps a "set-up not run" marker may leave out: nothing else.
SETUP_STEP = re.compile(
    r"^(python3 -m venv \.venv|\.venv/bin/pip install .*|\.venv/bin/uv pip install .*)$"
)
PORT_IN_TEXT = re.compile(
    r"(?:(?<=127\.0\.0\.1:)|(?<=localhost:)|(?<=--port )|(?<=--port=)|(?<=PORT=)|(?<= -p ))"
    r"(\d{4,5})\b"
)
VOLATILE = {"timing", "trace_id", "execution_id", "timestamp"}  # checked by type only

DRIVER = """

import asyncio as _asyncio

import httpx as _httpx


async def _drive() -> None:
    async with app.router.lifespan_context(app):
        transport = _httpx.ASGITransport(app=app)
        async with _httpx.AsyncClient(transport=transport, base_url="http://readme") as client:
            response = await client.post("/predict", json={"prompt": "Hello, world!"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True, body
    assert body["metadata"]["performance"]["tokens"]["method"] == "dspy_history_exact", body


_asyncio.run(_drive())
"""


@dataclass
class Block:
    """One fenced block of a page."""

    page: str
    line: int
    lang: str
    code: str
    not_run: str | None = None  # the reason given in the Markdown
    setup_not_run: str | None = None
    save_as: str | None = None
    output: str | None = None
    continues: bool = False

    @property
    def runnable(self) -> bool:
        return self.lang in RUNNABLE


def read_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, with its markers."""
    text = page.read_text(encoding="utf-8")
    name = str(page.relative_to(REPO)) if page.is_relative_to(REPO) else page.name
    blocks: list[Block] = []
    fences = list(FENCE.finditer(text))
    for index, match in enumerate(fences):
        indent, lang, body = match.group(1), match.group(2), match.group(3)
        before = text[fences[index - 1].end() if index else 0 : match.start()]
        following = fences[index + 1].start() if index + 1 < len(fences) else len(text)
        after = text[match.end() : following]
        code = "\n".join(line.removeprefix(indent) for line in body.splitlines()) + "\n"
        block = Block(name, text.count("\n", 0, match.start()) + 1, lang, code)
        stripped = before.rstrip()
        if (found := NOT_RUN.search(stripped)) is not None:
            block.not_run = " ".join(found.group(1).split())
        if (found := SETUP_NOT_RUN.search(stripped)) is not None:
            block.setup_not_run = " ".join(found.group(1).split())
        block.continues = stripped.endswith(CONTINUES)
        paragraph = stripped.rsplit("\n\n", 1)[-1]  # the prose before, or up to the next block
        if lang == "python" and (found := SAVE_AS.search(paragraph + after)) is not None:
            block.save_as = found.group(1)
        if (output := OUTPUT.match(text, match.end())) is not None:
            block.output = output.group(1)
        blocks.append(block)
    return blocks


BLOCKS = {str(page.relative_to(REPO)): read_blocks(page) for page in PAGES}
RUN_PAGES = [page for page, blocks in BLOCKS.items() if any(b.runnable for b in blocks)]
DEFAULT_PAGES = (
    "README.md",
    "docs/index.md",
    "docs/getting-started.md",
    "docs/performance.md",
    "docs/concepts/",
)
"""Pages (or folders) run in the default suite; the others are ``slow``."""


def _page_param(page: str) -> Any:
    fast = any(page == p or (p.endswith("/") and page.startswith(p)) for p in DEFAULT_PAGES)
    return pytest.param(page, id=page, marks=() if fast else pytest.mark.slow)


# -- output matching ---------------------------------------------------------------------


def _json_pattern(text: str) -> Any:
    """Expected JSON with ``{...}`` (any object) and ``,...`` (more keys) placeholders."""
    text = text.replace("{...}", '"__ANY__"').replace(",...}", ',"__MORE__":1}')
    return json.loads(text)


def _json_matches(want: Any, got: Any, key: str = "") -> bool:  # noqa: PLR0911 - one per case
    if want == "__ANY__" or key in VOLATILE:
        return want == "__ANY__" or type(want) is type(got) or key == "timing"
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return False
        keys = set(want) - {"__MORE__"}
        if "__MORE__" not in want and keys != set(got):
            return False
        return keys <= set(got) and all(_json_matches(want[k], got[k], k) for k in keys)
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(want) == len(got)
            and all(_json_matches(w, g) for w, g in zip(want, got, strict=True))
        )
    if isinstance(want, str) and want.endswith("..."):
        return isinstance(got, str) and got.startswith(want[:-3])
    if isinstance(want, float) and isinstance(got, float):
        return True  # a measured cost or time: the reader's run differs
    return bool(want == got and type(want) is type(got))


def _line_matches(want: str, got: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in want.split("..."))
    return re.fullmatch(pattern, got) is not None


def matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` is what ``expected`` shows (see the module's docstring)."""
    want_lines = [line.strip() for line in expected.strip().splitlines() if line.strip()]
    got_lines = [line.strip() for line in actual.strip().splitlines() if line.strip()]
    joined = "".join(want_lines)
    if joined.startswith("{"):
        try:
            want = _json_pattern(joined)
        except json.JSONDecodeError:
            pass
        else:
            try:
                got = json.loads("".join(got_lines))
            except json.JSONDecodeError:
                return False
            return _json_matches(want, got)
    return len(want_lines) == len(got_lines) and all(
        _line_matches(w, g) for w, g in zip(want_lines, got_lines, strict=True)
    )


# -- servers the pages assume, and a page's session ------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


_docs_redis_proc = factories.redis_proc(port=None)


def _pg_binary(name: str) -> str:
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    found = shutil.which(name) or (str(candidates[-1]) if candidates else None)
    assert found, f"PostgreSQL is not installed ({name}): apt-get install postgresql"
    return found


@pytest.fixture(scope="module")
def docs_postgres() -> Iterator[int]:
    """A private PostgreSQL for the pages (never the shared one); its port.

    It stands for the server a page assumes on 5432, with the role and database the page
    creates there (``llm``, password ``llm``).
    """
    initdb, pg_ctl, psql = _pg_binary("initdb"), _pg_binary("pg_ctl"), _pg_binary("psql")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="llm-server-docs-pg-"))
    if as_postgres:
        shutil.chown(folder, user="postgres", group="postgres")
    data, port = folder / "data", free_port()
    subprocess.run(
        [*as_postgres, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    log = str(folder / "log")
    subprocess.run(
        [*as_postgres, pg_ctl, "-D", str(data), "-o", options, "-l", log, "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        for statement in ("CREATE ROLE llm LOGIN PASSWORD 'llm'", "CREATE DATABASE llm OWNER llm"):
            subprocess.run(
                [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", statement],
                check=True,
                capture_output=True,
            )
        yield port
    finally:
        subprocess.run(
            [*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Server:
    """A command a page left serving."""

    command: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@dataclass
class Session:
    """A reader working through one page in a fresh clone's root."""

    root: Path
    env: dict[str, str]
    ports: dict[int, int]
    servers: list[Server] = field(default_factory=list)
    ran: int = 0
    python_so_far: list[str] = field(default_factory=list)

    def port(self, reader_port: int) -> int:
        if reader_port not in self.ports:
            self.ports[reader_port] = free_port()
        return self.ports[reader_port]

    def rewrite(self, text: str) -> str:
        """The reader's ports (``127.0.0.1:8000``, ``--port 8001``, ...) -> this session's."""
        return PORT_IN_TEXT.sub(lambda m: str(self.port(int(m.group(1)))), text)

    def where(self, block: Block) -> str:
        return f"{block.page} block at line {block.line}"

    # python

    def run_python(self, block: Block) -> None:
        code = block.code
        if block.continues:
            assert self.python_so_far, f"{self.where(block)} continues nothing"
            code = self.python_so_far[-1] + "\n" + code
        self.python_so_far.append(code)
        if "app = FastAPI(" in code and '"/predict"' in code and block.save_as is None:
            code += DRIVER
        script = self.root / (block.save_as or f"block_line{block.line}.py")
        script.write_text(code, encoding="utf-8")
        result = subprocess.run(
            [str(self.root / ".venv" / "bin" / "python"), script.name],
            cwd=self.root,
            env={**self.env, "PYTHONWARNINGS": "ignore::DeprecationWarning"},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, (
            f"{self.where(block)} failed:\n{result.stdout}\n{result.stderr[-5000:]}"
        )
        if block.output is not None:
            assert matches(block.output, result.stdout), (
                f"{self.where(block)} printed:\n{result.stdout}\nexpected:\n{block.output}"
            )
        self.ran += 1

    # shell

    def commands(self, block: Block) -> list[tuple[str, str | None]]:
        """``(command, expected output or None)`` of a shell or console block."""
        lines = block.code.splitlines()
        result: list[tuple[str, list[str] | None]] = []
        continued = False
        for line in lines:
            if continued:
                command, output = result[-1]
                result[-1] = (command[:-1] + line.strip(), output)
            elif block.lang == "console":
                if line.startswith("$ "):
                    result.append((line[2:].strip(), []))
                else:
                    assert result, f"{self.where(block)}: output before any command"
                    output = result[-1][1]
                    assert output is not None
                    output.append(line)
            elif line.strip() and not line.lstrip().startswith("#"):
                result.append((line.strip(), None))
            continued = bool(result) and result[-1][0].endswith("\\")
        return [(c, "\n".join(o) if o else None) for c, o in result]

    def run_shell(self, block: Block) -> None:
        for written, expected in self.commands(block):
            command = written
            if block.setup_not_run is not None:
                steps = [step.strip() for step in written.split("&&")]
                left_out = steps[:-1]
                assert left_out, f"{self.where(block)}: 'set-up not run' but no set-up steps"
                assert all(SETUP_STEP.match(step) for step in left_out), (
                    f"{self.where(block)}: 'set-up not run' may leave out install steps only: "
                    f"{left_out}"
                )
                command = steps[-1]
            self.run_command(block, self.rewrite(command), expected)
        self.ran += 1

    def run_command(self, block: Block, command: str, expected: str | None) -> None:
        bare = re.sub(r"\s+#.*$", "", command).strip()
        if (export := re.fullmatch(r"export (\w+)=(.+)", bare)) is not None:
            self.env[export.group(1)] = shlex.split(export.group(2))[0]
            return
        if bare.endswith("&") or SERVER.search(bare.split("&&")[-1]):
            self.serve(block, bare.removesuffix("&").strip())
            return
        result = subprocess.run(
            ["bash", "-c", "set -o pipefail; " + bare],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (
            f"{self.where(block)}: `{bare}` exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{self.server_logs()}"
        )
        if expected is not None:
            want = self.rewrite(expected)
            assert matches(want, result.stdout), (
                f"{self.where(block)}: `{bare}` printed:\n{result.stdout}\nexpected:\n{want}"
            )

    def serve(self, block: Block, command: str) -> None:
        found = re.search(r"--port[ =](\d+)", command)
        if found is not None:
            port = int(found.group(1))
        elif "redis-server" in command:
            port = self.port(6379)
        else:  # serve.py and run.py read PORT, uvicorn UVICORN_PORT: the reader's 8000
            port = int(self.env["PORT"])
        for server in [s for s in self.servers if s.port == port]:
            server.stop()  # the reader pressed Ctrl-C in that terminal
            self.servers.remove(server)
        log = self.root / f"server-{len(self.servers)}-{port}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.root,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(command, port, process, log)
        self.servers.append(server)
        deadline = time.monotonic() + 120
        while not _answers(port):
            assert process.poll() is None, (
                f"{self.where(block)}: `{command}` exited:\n{log.read_text()[-5000:]}"
            )
            assert time.monotonic() < deadline, (
                f"{self.where(block)}: `{command}` never answered on port {port}:\n"
                f"{log.read_text()[-5000:]}"
            )
            time.sleep(0.1)

    def server_logs(self) -> str:
        return "\n".join(
            f"--- {s.command}:\n{s.log.read_text(errors='replace')[-3000:]}" for s in self.servers
        )

    def close(self) -> None:
        for server in self.servers:
            server.stop()


def fresh_clone(folder: Path, session: Session) -> None:
    """What a fresh clone's root holds that the pages use; configs point at its ports."""
    for name in ("examples", "config"):
        shutil.copytree(REPO / name, folder / name)
    for name in ("constraints.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, folder / name)
    for config in folder.rglob("*.yml"):
        config.write_text(session.rewrite(config.read_text()))
    (folder / ".venv").symlink_to(REPO / ".venv")


def reader_environment() -> dict[str, str]:
    """The test's environment as a reader's shell: no virtualenv, no library settings."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "LLM_SERVER_", "LLM_CONFIG", "PYTEST", "VIRTUAL_ENV"))
        and key not in {"PORT", "UVICORN_PORT", "COV_CORE_SOURCE"}
    }
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if part and part != venv_bin
    )
    return env


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", [_page_param(page) for page in RUN_PAGES])
def test_docs_page_runs(page: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    blocks = BLOCKS[page]
    text = (REPO / page).read_text(encoding="utf-8")
    ports: dict[int, int] = {}
    if "6379" in text:
        redis: RedisExecutor = request.getfixturevalue("_docs_redis_proc")
        ports[6379] = redis.port
    if "5432" in text:
        ports[5432] = request.getfixturevalue("docs_postgres")
    env = reader_environment()
    session = Session(tmp_path, env, ports)
    env["PORT"] = env["UVICORN_PORT"] = str(session.port(8000))
    fresh_clone(tmp_path, session)
    try:
        for block in blocks:
            if not block.runnable or block.not_run is not None:
                continue
            if block.lang == "python":
                session.run_python(block)
            else:
                session.run_shell(block)
    finally:
        session.close()
    expected = sum(1 for b in blocks if b.runnable and b.not_run is None)
    assert session.ran == expected


def test_docs_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Counts every runnable block: run by ``test_docs_page_runs``, or marked with a reason."""
    runnable = [b for blocks in BLOCKS.values() for b in blocks if b.runnable]
    not_run = [b for b in runnable if b.not_run is not None]
    run = [b for b in runnable if b.not_run is None]
    for block in not_run:
        assert len(block.not_run or "") >= 15, f"{block.page}:{block.line}: say why it is not run"
    for blocks in BLOCKS.values():
        for block in blocks:
            assert block.not_run is None or block.runnable, f"{block.page}:{block.line}"
    pages_run = {b.page for b in run}
    partly = [b for b in run if b.setup_not_run is not None]
    with capsys.disabled():
        print(
            f"\ndocs: {len(run)} blocks run on {len(pages_run)} of {len(PAGES)} pages "
            f"({sum(b.lang == 'python' for b in run)} python, "
            f"{sum(b.lang != 'python' for b in run)} shell; {len(partly)} of them without their "
            f"install steps), {len(not_run)} marked not run:"
        )
        for block in [*partly, *not_run]:
            reason = block.not_run or f"install steps not run: {block.setup_not_run}"
            print(f"  {block.page}:{block.line}: {reason}")
    assert len(run) >= 60
    assert len(pages_run) >= 15
    assert len(not_run) <= 12


def test_output_matching() -> None:
    assert matches("1.1.0 2\n", "1.1.0 2")
    assert matches("id ...", "id 4f1c")
    assert not matches("1.1.0 2", "1.1.0 3")
    assert not matches("a", "a\nb")
    assert matches('{"a":1,\n"b":{...}}', '{"a": 1, "b": {"c": 2}}')
    assert not matches('{"a":1,"b":{...}}', '{"a": 2, "b": {}}')
    assert matches('{"a":1,...}', '{"a": 1, "z": true}')
    assert not matches('{"a":1}', '{"a": 1, "z": true}')
    assert matches('{"timing":{"total_ms":5.1},"trace_id":"66d4"}', '{"timing":{},"trace_id":"x"}')
    assert not matches('{"trace_id":"66d4"}', '{"trace_id":7}')
    assert matches('x{...,a="b",...} 1.0', 'x{c="d",a="b",e="f"} 1.0')


def test_markers_are_read(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Save this as `app.py`:\n\n```python\nx = 1\n```\n\n"
        "<!-- not run: it needs the internet -->\n```bash\ncurl https://example.org\n```\n\n"
        "Then:\n\n<!-- continues the block above -->\n```python\nprint(x)\n```\n\n"
        "<!-- output -->\n```text\n1\n```\n\n"
        "- a list:\n\n  ```console\n  $ echo a \\\n      b\n  a b\n  ```\n\n"
        "<!-- set-up not run: the venv exists -->\n```bash\npython3 -m venv .venv && ls\n```\n"
    )
    first, curl, second, output, listed, setup = read_blocks(page)
    assert (first.lang, first.save_as, first.not_run) == ("python", "app.py", None)
    assert curl.not_run == "it needs the internet"
    assert second.not_run is None
    assert second.continues
    assert second.output == "1\n"
    assert output.lang == "text"
    assert not output.runnable
    session = Session(tmp_path, {}, {})
    assert session.commands(listed) == [("echo a b", "a b")]
    assert setup.setup_not_run == "the venv exists"
    assert (
        session.rewrite("curl http://127.0.0.1:8000/x --port 8001")
        != "curl http://127.0.0.1:8000/x --port 8001"
    )
    assert session.rewrite("port 8000 of 1") == "port 8000 of 1"


def test_every_link_in_the_readme_resolves() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not link.startswith(("http://", "https://", "#"))]
    assert len(local) >= 10  # the README points into the documentation
    missing = [link for link in local if not (REPO / link.split("#")[0]).exists()]
    assert not missing, missing
    assert len((REPO / "README.md").read_bytes()) <= 15 * 1024


def test_every_page_of_the_docs_is_in_the_site_navigation() -> None:
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert not {page for page in pages if page not in nav}


def test_every_setting_and_yaml_key_is_in_the_configuration_reference() -> None:
    from pydantic import AliasChoices

    from llm_server.core.config import FrameworkSettings
    from llm_server.core.model_config import (
        BudgetConfig,
        BudgetLimitsConfig,
        CaptureConfig,
        ModelConfig,
        ModelsConfig,
        RateLimitConfig,
    )

    reference = (REPO / "docs" / "reference" / "configuration.md").read_text()
    for name, field_ in FrameworkSettings.model_fields.items():
        alias = field_.validation_alias
        variable = str(alias.choices[0]) if isinstance(alias, AliasChoices) else name
        assert f"`{variable}`" in reference, variable
    for name in ModelConfig.model_fields:
        assert f"`{name}" in reference, name
    for name in RateLimitConfig.model_fields:
        assert f"`rate_limit.{name}`" in reference or f"/ `{name}`" in reference, name
    for name in ModelsConfig.model_fields:
        assert f"`{name}" in reference, name
    for name in [*BudgetConfig.model_fields, *BudgetLimitsConfig.model_fields]:
        assert f"{name}`" in reference, name
    for name in CaptureConfig.model_fields:
        assert f"`capture.<program>.{name}`" in reference, name


INSIDER = re.compile(
    r"FACTS\.md|[Tt]he room holds|\b(?:[Ee]ach|every|per|a|three) rooms?\b"
    r"|the issue that asked|reference README"
)


def test_public_text_has_no_words_only_the_team_knows() -> None:
    """README, docs, examples, benchmarks and docstrings use words a user knows."""
    files = [REPO / "README.md", *(REPO / "docs").rglob("*.md")]
    files += [*(REPO / "examples").rglob("*.py"), *(REPO / "src").rglob("*.py")]
    files += (REPO / "benchmarks").rglob("*.py")  # they write docs/benchmarks.md
    found = [
        f"{path.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0)}"
        for path in files
        for text in [path.read_text(encoding="utf-8")]
        for match in INSIDER.finditer(text)
    ]
    assert not found, found
