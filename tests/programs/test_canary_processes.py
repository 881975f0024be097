"""Canaries over real HTTP: two app processes on one private PostgreSQL and one private Redis.

The split and its stickiness across processes, an unparseable canary rolled back by the
guard at 20 requests/s, an identical canary left alone over 5,000 requests and promoted,
and the operator's surface (admin routes behind a token, the console command) end to end.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dspy
import httpx
import pytest
from _pg_programs import StandIn
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor

from _app_processes import EXAMPLES, serving_app, the_apps_module
from llm_server.models.program_manager import ProgramManager
from llm_server.postgres import PostgresStorageAdapter
from llm_server.testing import LocalProvider, RawReply, RecordedRequest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

_canary_redis_proc = factories.redis_proc(port=None)
APP = Path(__file__).parent / "canary_app" / "main.py"
MARK = "canary-demo-marker"
TOKEN = "admin-token-for-the-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CONSOLE = Path(sys.executable).parent / "llm-server"


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    executor: RedisExecutor = request.getfixturevalue("_canary_redis_proc")
    return f"redis://{executor.host}:{executor.port}/0"


class Fleet:
    """Two app processes, their settings, and a version ready to canary."""

    def __init__(self, one: str, two: str, env: dict[str, str], canary_version: str) -> None:
        self.urls = (one, two)
        self.env = env
        self.canary_version = canary_version
        self._client = httpx.Client(timeout=30)
        # one client per load thread: httpx's connection pool shared by 16 threads once read
        # from a socket another thread had just closed (EBADF, counted as a failed request)
        self._local = threading.local()
        self._clients: list[httpx.Client] = [self._client]
        self._clients_lock = threading.Lock()
        self.asked = 0
        """Program requests sent so far."""

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def _thread_client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=30)
            with self._clients_lock:
                self._clients.append(client)
        return client

    def ask(self, url: str, session: str | None = None) -> dict[str, Any]:
        headers = {"X-Session": session} if session is not None else {}
        self.asked += 1
        response = self._thread_client().post(
            f"{url}/programs/summarize", json={"text": "hello"}, headers=headers
        )
        body: dict[str, Any] = response.json()
        body["status"] = response.status_code
        return body

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._client.request(
            method, f"{self.urls[0]}/admin/programs/summarize{path}", headers=ADMIN, **kwargs
        )

    def console(self, *args: str) -> Any:
        done = subprocess.run(
            [str(CONSOLE), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None


@pytest.fixture
def fleet(
    tmp_path: Path, private_postgres: str, pg_schema: str, redis_url: str
) -> Iterator[tuple[Fleet, LocalProvider]]:
    shutil.copy2(APP, tmp_path / "main.py")
    shutil.copytree(EXAMPLES / "fleet_app" / "config", tmp_path / "config")
    with LocalProvider() as provider:
        env = {
            "LLM_SERVER_PROGRAM_STORE": private_postgres,
            "LLM_SERVER_PROGRAM_STORE_SCHEMA": pg_schema,
            "LLM_SERVER_REDIS_URL": redis_url,
            "LLM_SERVER_REDIS_PREFIX": f"canary-{pg_schema}",
            "LLM_SERVER_REDIS_TIMEOUT_S": "0.5",
            "LLM_SERVER_PROVIDER_URL": provider.base_url,
            "FLEET_REQUESTS_PER_MINUTE": "1000000",
            "FLEET_TOKENS_PER_MINUTE": "1000000000",
            "OTEL_ENABLED": "false",
            "ADMIN_TOKEN": TOKEN,
        }
        with serving_app(tmp_path, env=env) as one, serving_app(tmp_path, env=env) as two:
            module = the_apps_module(tmp_path)
            store = PostgresStorageAdapter(private_postgres, schema=pg_schema)
            try:
                notebook = ProgramManager(model_manager=StandIn(), storage_adapter=store)
                notebook.register_program(module.Summarize, name="Summarizer")
                tuned = dspy.Predict(module.Summarize)
                tuned.demos = [dspy.Example(text=MARK, summary="short").with_inputs("text")]
                saved = notebook.save_program_version("summarize", tuned, optimizer="manual")
                apps = Fleet(one, two, env, str(saved.version))
                for url in apps.urls:  # each process's first call (DSPy's first-call work)
                    assert apps.ask(url)["metadata"]["program"]["version"] == "1.0.0"
                try:
                    yield apps, provider
                finally:
                    apps.close()
            finally:
                store.close()
                sys.modules.pop("main", None)


def wait_until_both_split(fleet: Fleet, started: float) -> float:
    """Seconds from ``started`` until both processes answer with a canary flag."""
    for url in fleet.urls:
        while "canary" not in fleet.ask(url)["metadata"]["program"]:
            assert time.monotonic() - started < 2.0, "a replica did not split within 2 s"
            time.sleep(0.02)
    took = time.monotonic() - started
    assert took < 2.0
    return took


def test_a_ten_percent_canary_gets_ten_percent_and_a_key_the_same_version_everywhere(
    fleet: tuple[Fleet, LocalProvider],
) -> None:
    apps, _ = fleet
    asked = time.monotonic()
    response = apps.admin(
        "POST",
        "/canary",
        json={
            "version": apps.canary_version,
            "weight": 0.1,
            "sticky": "header:X-Session",
            "actor": "ana",
        },
    )
    assert response.status_code == 200, response.text
    started = time.monotonic()
    split = wait_until_both_split(apps, started)
    print(f"started in {started - asked:.2f} s; both replicas split {split:.2f} s later")

    def one(index: int) -> tuple[str, dict[str, Any]]:
        session = f"user-{index}"
        return session, apps.ask(apps.urls[index % 2], session)["metadata"]["program"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(2000)))
    share = sum(block["canary"] for _, block in answers) / len(answers)
    print(f"canary share over 2,000 requests: {share:.2%}")
    assert 0.08 <= share <= 0.12
    assert all(
        block["version"] == (apps.canary_version if block["canary"] else "1.0.0")
        for _, block in answers
    )
    for session, block in answers[:200]:  # each key asked again, on the other process too
        for url in apps.urls:
            again = apps.ask(url, session)["metadata"]["program"]
            assert (again["version"], again["canary"]) == (block["version"], block["canary"])


class Load:
    """Requests at ``rate`` per second to both processes (alternating) until stopped."""

    def __init__(self, fleet: Fleet, rate: float, total: int | None = None) -> None:
        self.fleet, self.rate, self.total = fleet, rate, total
        self.sent = 0
        self.statuses: dict[int | str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _one(self, index: int) -> None:
        status: int | str
        try:
            status = self.fleet.ask(self.fleet.urls[index % 2])["status"]
        except Exception as exc:  # counted, so a test sees it
            status = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def _run(self) -> None:
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            for index in itertools.count():
                if self._stop.is_set() or (self.total is not None and index >= self.total):
                    break
                if self.rate:
                    delay = start + index / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                pool.submit(self._one, index)
                self.sent = index + 1


_CANARY = {"program": {"canary": True}}  # an error envelope: still answered by the canary


def wait_for(check: Callable[[], bool], timeout_s: float) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s
        time.sleep(0.2)
    return time.monotonic() - start


def _unparseable_for_the_canary(request: RecordedRequest) -> Any:
    if MARK in json.dumps(request.body):
        return RawReply("Sorry, I will not use your format.")
    return {"summary": "a fine summary"}


async def _slow_for_the_canary(request: RecordedRequest) -> Any:
    if MARK in json.dumps(request.body):
        await asyncio.sleep(0.4)
    return {"summary": "a fine summary"}


def _wordy_for_the_canary(request: RecordedRequest) -> Any:
    if MARK in json.dumps(request.body):  # about 3x the tokens of a stable request
        return {"summary": "a fine summary " + "and more " * 150}
    return {"summary": "a fine summary"}


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (_unparseable_for_the_canary, "parse failures"),
        (_slow_for_the_canary, "p95 latency"),
        (_wordy_for_the_canary, "cost per request"),
    ],
    ids=["unparseable", "slow", "three-times-the-tokens"],
)
def test_a_bad_canary_is_rolled_back_within_60_s_at_20_requests_a_second(
    fleet: tuple[Fleet, LocalProvider], reply: Callable[[RecordedRequest], Any], reason: str
) -> None:
    apps, provider = fleet
    provider.script(reply=reply)
    guard = {"min_requests": 20}
    body = {
        "version": apps.canary_version,
        "weight": 0.1,
        "guard": guard,
        "actor": "ana",
        "reason": "weekly optimized version",
    }
    with Load(apps, rate=20) as load:
        assert apps.admin("POST", "/canary", json=body).status_code == 200

        def ended() -> bool:
            return apps.admin("GET", "/canary").json()["running"] is None

        took = wait_for(ended, 60)
    last = apps.admin("GET", "/canary").json()["canaries"][-1]
    print(
        f"rolled back {took:.1f} s after the start, {load.sent} requests sent: "
        f"{load.statuses}: {last['end_reason']}"
    )
    assert (last["outcome"], last["ended_by"]) == ("rollback", "canary-guard")
    assert last["end_reason"].startswith(reason), last["end_reason"]
    assert set(load.statuses) <= {200, 502}
    for url in apps.urls:  # everyone is on the stable version again (within 2 s: until a
        # replica applies the rollback its canary share still answers, with the canary's error)
        wait_for(
            lambda url=url: "canary" not in apps.ask(url).get("metadata", _CANARY)["program"], 2
        )
        assert apps.ask(url)["metadata"]["program"]["version"] == "1.0.0"


@pytest.mark.timeout(600)
def test_an_identical_canary_is_not_rolled_back_over_5000_requests_and_is_promoted(
    fleet: tuple[Fleet, LocalProvider],
) -> None:
    apps, _ = fleet
    body = {"version": apps.canary_version, "weight": 0.5, "guard": {}, "actor": "ana"}
    assert apps.admin("POST", "/canary", json=body).status_code == 200
    started = time.monotonic()
    wait_until_both_split(apps, started)  # from here on every request is counted in the canary
    expected = 5000 + len(apps.urls)  # and the last ask to each process above
    with Load(apps, rate=0, total=5000) as load:
        wait_for(lambda: load.sent >= 5000, 240)
    time.sleep(1.5)  # the guard's last looks at the fleet's figures
    watched = apps.admin("GET", "/canary").json()
    print(
        f"5,000 requests in {time.monotonic() - started:.0f} s: {load.statuses}; "
        f"figures: {json.dumps(watched['figures'])}"
    )
    assert load.statuses == {200: 5000}
    assert watched["running"] is not None, watched["canaries"][-1]  # no false alarm

    def counted() -> int:
        figures = apps.admin("GET", "/canary").json()["figures"]
        return int(figures["stable"]["requests"] + figures["canary"]["requests"])

    assert wait_for(lambda: counted() == expected, 5) < 5, counted()  # the fleet's figures: all
    assert apps.admin("POST", "/canary/end", json={"outcome": "rollback"}).status_code == 200
    # the same version again, now promoted on its own after 300 clean canary requests
    guard = {"promote_after_requests": 300}
    body = {"version": apps.canary_version, "weight": 0.5, "guard": guard, "actor": "ana"}
    assert apps.admin("POST", "/canary", json=body).status_code == 200
    with Load(apps, rate=50) as load:
        wait_for(lambda: apps.admin("GET", "/canary").json()["running"] is None, 60)
    history = apps.admin("GET", "/canary").json()["canaries"]
    print(f"auto-promoted after {load.sent} requests: {history[-1]['end_reason']}")
    assert [c["outcome"] for c in history] == ["rollback", "promote"]
    assert history[-1]["ended_by"] == "canary-guard"
    releases = apps.admin("GET", "/releases").json()["releases"]
    assert releases[-1]["version"] == apps.canary_version
    for url in apps.urls:
        assert (
            wait_for(
                lambda url=url: (
                    apps.ask(url)["metadata"]["program"]["version"] == apps.canary_version
                ),
                2,
            )
            < 2
        )


def test_the_admin_routes_and_the_console_do_each_operation_and_refuse_strangers(
    fleet: tuple[Fleet, LocalProvider],
) -> None:
    apps, _ = fleet
    one = apps.urls[0]
    for method, path in (("GET", "/versions"), ("POST", "/rollback"), ("GET", "/canary")):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            refused = httpx.request(
                method, f"{one}/admin/programs/summarize{path}", headers=headers, json={}
            )
            assert refused.status_code == 401, (path, refused.text)
    version = apps.canary_version
    # the admin routes
    listed = apps.admin("GET", "/versions").json()
    assert listed == {"program_id": "summarize", "serving": "1.0.0", "versions": ["1.0.0", version]}
    assert apps.admin("POST", "/promote", json={"version": version, "actor": "ana"}).json() == {
        "program_id": "summarize",
        "serving": version,
    }
    assert apps.admin("POST", "/rollback", json={"reason": "r"}).json()["serving"] == "1.0.0"
    assert [r["action"] for r in apps.admin("GET", "/releases").json()["releases"]] == [
        "promote",
        "promote",
        "rollback",
    ]
    started = apps.admin("POST", "/canary", json={"version": version, "weight": 0.2})
    assert started.status_code == 200
    again = apps.admin("POST", "/canary", json={"version": version})
    assert again.status_code == 409, again.text
    watched = apps.admin("GET", "/canary").json()
    assert watched["running"]["version"] == version
    assert set(watched["figures"]) == {"shared", "stable", "canary"}
    ended = apps.admin("POST", "/canary/end", json={"outcome": "rollback", "reason": "by hand"})
    assert ended.json()["outcome"] == "rollback"
    assert apps.admin("POST", "/canary/end", json={"outcome": "rollback"}).status_code == 409
    # the console command, with the app's settings
    assert apps.console("versions", "summarize")["versions"] == ["1.0.0", version]
    promoted = apps.console("promote", "summarize", version, "--actor", "ci", "--reason", "eval")
    assert (promoted["version"], promoted["actor"]) == (version, "ci")
    assert wait_for(lambda: apps.ask(one)["metadata"]["program"]["version"] == version, 2) < 2
    assert apps.console("rollback", "summarize", "--actor", "ci")["version"] == "1.0.0"
    assert len(apps.console("releases", "summarize")) == 5
    canary = apps.console(
        "canary",
        "start",
        "summarize",
        version,
        "--weight",
        "0.3",
        "--sticky",
        "header:X-Session",
        "--actor",
        "ci",
    )
    assert canary["weight"] == 0.3
    wait_until_both_split(apps, time.monotonic())
    for index in range(60):
        apps.ask(apps.urls[index % 2], f"k{index}")
    time.sleep(1.5)  # the fleet's figures are written every 100 ms, read every second
    watch = subprocess.run(
        [str(CONSOLE), "canary", "watch", "summarize"],
        env={**os.environ, **apps.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(watch.stdout)
    figures = report["figures"]
    # every request since the start, less the ones a replica served before it followed
    assert figures["stable"]["requests"] + figures["canary"]["requests"] == 60 + len(apps.urls)
    ended = apps.console("canary", "end", "summarize", "--outcome", "promote", "--reason", "good")
    assert ended["outcome"] == "promote"
    assert [c["outcome"] for c in apps.console("canary", "list", "summarize")] == [
        "rollback",
        "promote",
    ]
    assert (
        wait_for(
            lambda: (
                apps.ask(one)["metadata"]["program"]
                == {"id": "summarize", "version": version, "name": "Summarizer"}
            ),
            2,
        )
        < 2
    )
    refused = subprocess.run(
        [str(CONSOLE), "canary", "end", "summarize", "--outcome", "promote"],
        env={**os.environ, **apps.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("llm-server: program 'summarize' has no running canary")
