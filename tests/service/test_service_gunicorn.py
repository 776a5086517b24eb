"""``plinth serve`` for real: Gunicorn with 2 uvicorn workers, on a bind address and on a
systemd-style inherited socket; HUP reload and SIGTERM finish in-flight requests; metrics are
summed across workers; logs are JSON without secrets or payloads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from service_support import IRIS_INPUT, artifacts_with_test_models, subprocess_env, wait_until_ready
from throwaway_pg import free_port

SLOW_SECONDS = 2.0
PAYLOAD_MARKER = 7.654321  # an input value that must never show up in a log line


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    client: httpx2.Client
    log_path: Path
    runtime_dir: Path
    release_file: Path
    home: Path

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]


def make_serve_environment(tmp_path: Path, migrated_database: str) -> dict[str, str]:
    artifacts = artifacts_with_test_models(tmp_path, sleepy_delay=SLOW_SECONDS)
    (tmp_path / "run").mkdir()
    (tmp_path / "home").mkdir()
    release = tmp_path / "release.json"
    release.write_text(json.dumps({"version": "r1", "git_revision": "aaa", "build_time": "t1"}))
    return subprocess_env(
        PLINTH_ENVIRONMENT="testing",
        PLINTH_DATABASE_URL=migrated_database,
        PLINTH_ARTIFACTS_DIR=str(artifacts),
        PLINTH_MODELS="iris,sleepy",
        PLINTH_PREDICT_TIMEOUT_SECONDS="30",
        PLINTH_WORKERS="2",
        PLINTH_GRACEFUL_TIMEOUT_SECONDS="20",
        PLINTH_RELEASE_INFO_FILE=str(release),
        RUNTIME_DIRECTORY=str(tmp_path / "run"),
        HOME=str(tmp_path / "home"),
    )


def _start(command: list[str], environment: dict[str, str], tmp_path: Path, client, **popen):
    log_path = tmp_path / "serve.log"
    process = subprocess.Popen(
        command,
        env=environment,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        **popen,
    )
    served = Served(
        process=process,
        client=client,
        log_path=log_path,
        runtime_dir=Path(environment["RUNTIME_DIRECTORY"]),
        release_file=Path(environment["PLINTH_RELEASE_INFO_FILE"]),
        home=Path(environment["HOME"]),
    )
    try:
        wait_until_ready(client)
    except AssertionError:
        process.kill()
        raise AssertionError(log_path.read_text()[-3000:]) from None
    return served


def _stop(served: Served) -> None:
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            served.process.kill()
    served.client.close()


@pytest.fixture
def serve_environment(tmp_path: Path, migrated_database: str) -> dict[str, str]:
    return make_serve_environment(tmp_path, migrated_database)


@pytest.fixture(scope="module")
def served_on_port(
    tmp_path_factory: pytest.TempPathFactory, migrated_database: str
) -> Iterator[Served]:
    """One server for the tests below (each Gunicorn start costs seconds of worker boot).
    They run in file order and the last one stops it with SIGTERM."""
    tmp_path = tmp_path_factory.mktemp("served")
    serve_environment = make_serve_environment(tmp_path, migrated_database)
    port = free_port()
    serve_environment["PLINTH_BIND"] = f"127.0.0.1:{port}"
    client = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    served = _start(["plinth", "serve"], serve_environment, tmp_path, client)
    yield served
    _stop(served)


def slow_request_in_background(client: httpx2.Client) -> tuple[threading.Thread, list]:
    """Start a prediction that takes SLOW_SECONDS; the result lands in the returned list."""
    results: list = []

    def call() -> None:
        try:
            results.append(
                client.post("/v1/models/sleepy/predict", json={"inputs": [{"value": 7}]})
            )
        except httpx2.HTTPError as error:  # recorded, so the assertion shows it
            results.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(SLOW_SECONDS / 3)  # it is now sleeping inside a worker
    return thread, results


def healthz_count_per_worker(metrics_dir: Path) -> dict[str, float]:
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            for sample in metric.samples:
                if sample.name == "plinth_http_requests_total" and sample.labels == {
                    "method": "GET", "route": "/healthz", "status": "200"
                }:  # fmt: skip
                    total += sample.value
        counts[path.stem.split("_", 1)[1]] = total
    return counts


def scraped_healthz_count(client: httpx2.Client) -> float:
    wanted = 'plinth_http_requests_total{method="GET",route="/healthz",status="200"} '
    # A fresh connection: the client's pooled one may be the one Gunicorn is just closing
    # for idleness (its keep-alive), which would end as a reset, not an answer.
    scrape = httpx2.get(f"{client.base_url}/metrics", headers={"Connection": "close"}, timeout=10)
    for line in scrape.text.splitlines():
        if line.startswith(wanted):
            return float(line.removeprefix(wanted))
    return 0.0


def test_serves_on_bind_address_with_metrics_summed_across_workers(served_on_port: Served) -> None:
    served = served_on_port
    assert any(
        "Listening at: http://127.0.0.1:" in line["message"]
        and f"({served.process.pid})" in line["message"]
        for line in served.log_lines()
    ), "the Gunicorn master must be the `plinth serve` process itself"

    metrics_dir = served.runtime_dir / "metrics"
    url = str(served.client.base_url) + "/healthz"

    def fresh_connection_request(_: int) -> int:
        return httpx2.get(url, headers={"Connection": "close"}, timeout=10).status_code

    sent = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        while sent < 400:
            assert set(pool.map(fresh_connection_request, range(40))) == {200}
            sent += 40
            per_worker = healthz_count_per_worker(metrics_dir)
            if len([count for count in per_worker.values() if count > 0]) >= 2:
                break
    per_worker = healthz_count_per_worker(metrics_dir)
    assert len([count for count in per_worker.values() if count > 0]) >= 2, per_worker
    # Whichever worker answers the scrape, it reports the sum over all workers.
    readiness_probes = sum(per_worker.values()) - sent  # wait_until_ready used /readyz only
    assert readiness_probes == 0
    for _ in range(6):
        assert scraped_healthz_count(served.client) == sent

    # Gunicorn's control socket stays off ($HOME/.gunicorn/gunicorn.ctl would be the default).
    assert not (served.home / ".gunicorn").exists()


def test_logs_are_json_with_request_ids_and_no_secrets(
    served_on_port: Served, migrated_database: str
) -> None:
    served = served_on_port
    response = served.client.post(
        "/v1/models/iris/predict",
        json={"inputs": [{**IRIS_INPUT, "sepal_length_cm": PAYLOAD_MARKER}]},
        headers={"X-Request-ID": "trace-me-1", "X-Forwarded-For": "203.0.113.9"},
    )
    assert response.status_code == 200
    served.client.post("/v1/models/iris/predict", json={"inputs": [{"bad": PAYLOAD_MARKER}]})
    time.sleep(0.5)
    lines = served.log_lines()  # every line parses as JSON
    access = [line for line in lines if line.get("request_id") == "trace-me-1"]
    assert len(access) == 1
    assert access[0]["method"] == "POST"
    assert access[0]["route"] == "/v1/models/iris/predict"
    assert access[0]["status"] == 200
    assert access[0]["latency_ms"] > 0
    # Loopback is a trusted proxy (Gunicorn's forwarded_allow_ips default).
    assert access[0]["client"] == "203.0.113.9"
    text = served.log_path.read_text()
    password = migrated_database.split(":")[2].split("@")[0]
    assert password not in text
    assert str(PAYLOAD_MARKER) not in text


def test_hup_reload_finishes_in_flight_request_and_shows_new_release(
    served_on_port: Served,
) -> None:
    served = served_on_port
    assert served.client.get("/version").json()["version"] == "r1"
    thread, results = slow_request_in_background(served.client)
    served.release_file.write_text(
        json.dumps({"version": "r2", "git_revision": "bbb", "build_time": "t2"})
    )
    served.process.send_signal(signal.SIGHUP)
    thread.join(timeout=30)
    assert results and isinstance(results[0], httpx2.Response), results
    assert results[0].status_code == 200
    assert results[0].json()["predictions"][0]["output"] == {"value": 7}
    deadline = time.monotonic() + 60
    while served.client.get("/version").json()["version"] != "r2":
        assert time.monotonic() < deadline, "new workers never served the new release"
        time.sleep(0.2)
    assert served.process.poll() is None
    assert served.client.get("/version").json()["git_revision"] == "bbb"


def test_sigterm_finishes_in_flight_request_then_exits(served_on_port: Served) -> None:
    served = served_on_port
    thread, results = slow_request_in_background(served.client)
    served.process.send_signal(signal.SIGTERM)
    thread.join(timeout=30)
    assert results and isinstance(results[0], httpx2.Response), results
    assert results[0].status_code == 200
    assert served.process.wait(timeout=30) == 0
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(str(served.client.base_url) + "/healthz", timeout=2)


def test_serves_from_systemd_socket_passed_as_fd_3(
    serve_environment: dict[str, str], tmp_path: Path
) -> None:
    socket_path = tmp_path / "plinth.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(64)
    unused_port = free_port()
    serve_environment["PLINTH_BIND"] = f"127.0.0.1:{unused_port}"
    serve_environment["LISTEN_FDS"] = "1"
    # What systemd does: the socket is fd 3 and LISTEN_PID is the service's own PID.
    # `exec` keeps the shell's PID ($$) for plinth, so LISTEN_PID matches it.
    fd = listener.fileno()
    wrapper = f"LISTEN_PID=$$ exec plinth serve 3<&{fd} {fd}<&-"
    client = httpx2.Client(
        transport=httpx2.HTTPTransport(uds=str(socket_path)), base_url="http://plinth", timeout=30
    )
    served = _start(["bash", "-c", wrapper], serve_environment, tmp_path, client, pass_fds=(fd,))
    listener.close()  # the service holds its own copy now
    try:
        response = client.post(
            "/v1/models/iris/predict",
            json={"inputs": [IRIS_INPUT]},
            headers={"X-Forwarded-For": "198.51.100.7", "X-Request-ID": "via-unix-socket"},
        )
        assert response.status_code == 200
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(f"http://127.0.0.1:{unused_port}/healthz", timeout=2)
        # Graceful stop still finishes a request in flight on the inherited socket.
        thread, results = slow_request_in_background(client)
        served.process.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        assert results and isinstance(results[0], httpx2.Response), results
        assert results[0].status_code == 200
        assert served.process.wait(timeout=30) == 0
        access = [
            line for line in served.log_lines() if line.get("request_id") == "via-unix-socket"
        ]
        assert access[0]["client"] == "198.51.100.7"
    finally:
        _stop(served)


def test_workers_exit_when_the_master_is_killed(serve_environment: dict[str, str], tmp_path: Path):
    """A SIGKILLed master must not leave uvicorn workers serving from the inherited socket
    (where systemd cannot kill the whole cgroup they would serve old code forever)."""
    port = free_port()
    serve_environment["PLINTH_BIND"] = f"127.0.0.1:{port}"
    client = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    served = _start(["plinth", "serve"], serve_environment, tmp_path, client)
    try:
        workers = subprocess.run(
            ["pgrep", "-P", str(served.process.pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert len(workers) == 2
        served.process.kill()
        served.process.wait(timeout=10)
        deadline = time.monotonic() + 20
        alive = workers
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
            time.sleep(0.2)
        assert alive == [], f"workers outlived their master: {alive}"
    finally:
        _stop(served)


def _worker_pids(master: subprocess.Popen[bytes]) -> set[str]:
    found = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True)
    return set(found.stdout.split())


def test_a_worker_started_after_current_moved_reports_its_masters_release(
    serve_environment: dict[str, str], tmp_path: Path
):
    """A release cutover switches `current`, then re-executes the master. A worker the old
    master starts in between (here: both crash and are respawned) runs the old release's
    code, so /version names the old release, or the health check could pass on it."""
    releases = tmp_path / "releases"
    for name, revision in (("r1", "aaa"), ("r2", "bbb")):
        (releases / name).mkdir(parents=True)
        info = {"version": name, "git_revision": revision, "build_time": "t"}
        (releases / name / "release.json").write_text(json.dumps(info))
    current = tmp_path / "current"
    current.symlink_to(releases / "r1")
    serve_environment["PLINTH_RELEASE_INFO_FILE"] = str(current / "release.json")
    port = free_port()
    serve_environment["PLINTH_BIND"] = f"127.0.0.1:{port}"
    client = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    served = _start(["plinth", "serve"], serve_environment, tmp_path, client)
    try:
        assert client.get("/version").json()["version"] == "r1"
        switched = tmp_path / "current.new"
        switched.symlink_to(releases / "r2")
        os.replace(switched, current)  # as plinth-release switches it
        crashed = _worker_pids(served.process)
        for pid in crashed:
            os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(_worker_pids(served.process) - crashed) < 2:
            assert time.monotonic() < deadline, "the crashed workers were never replaced"
            time.sleep(0.2)
        wait_until_ready(client)
        served_versions = {
            httpx2.get(f"{client.base_url}/version", headers={"Connection": "close"}).json()[
                "version"
            ]
            for _ in range(20)  # a connection each, so both new workers answer
        }
        assert served_versions == {"r1"}
    finally:
        _stop(served)


def _healthz(served: Served, times: int) -> None:
    url = f"{served.client.base_url}/healthz"
    for _ in range(times):  # a connection each, so both workers answer some
        assert httpx2.get(url, headers={"Connection": "close"}, timeout=10).status_code == 200


def _stop_pid(pid: int) -> None:
    """SIGTERM a master that is not our child (a re-exec'd one) and wait until it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
                return  # exited, not yet reaped by whoever adopted it
        except FileNotFoundError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def test_counters_survive_a_usr2_reexec(serve_environment: dict[str, str], tmp_path: Path):
    """A release cutover re-executes the master (USR2) while the old master's workers still
    serve and count in the same metrics directory (systemd's RuntimeDirectory, kept across the
    re-exec); the new master removed their files as leftovers, and every counter dropped at
    each release. The deploy then stops the old master; the counts stay."""
    port = free_port()
    serve_environment["PLINTH_BIND"] = f"127.0.0.1:{port}"
    client = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    served = _start(["plinth", "serve"], serve_environment, tmp_path, client)
    new_master = None
    try:
        _healthz(served, 10)
        assert scraped_healthz_count(client) == 10
        old_workers = _worker_pids(served.process)
        served.process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "no re-exec'd master with its two workers"
            children = _worker_pids(served.process) - old_workers
            if len(children) == 1:
                new_master = int(children.pop())
                found = subprocess.run(["pgrep", "-P", str(new_master)], capture_output=True)
                if len(found.stdout.split()) == 2:
                    break
            time.sleep(0.2)
        _healthz(served, 10)  # answered by the old workers and the new ones
        assert scraped_healthz_count(client) == 20
        served.process.send_signal(signal.SIGTERM)  # as the deploy stops the old master
        assert served.process.wait(timeout=30) == 0
        wait_until_ready(client)
        assert scraped_healthz_count(client) == 20
    finally:
        _stop(served)
        if new_master is not None:
            _stop_pid(new_master)


def _reload(served: Served, env_file: Path, text: str) -> None:
    """Edit the env file, HUP the master and wait until none of the old workers is left."""
    old_workers = _worker_pids(served.process)
    env_file.write_text(text)
    served.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while _worker_pids(served.process) & old_workers:
        assert time.monotonic() < deadline, "the old workers were never replaced"
        time.sleep(0.2)
    assert served.process.poll() is None


def _batch_of_five(served: Served) -> int:
    return served.client.post(
        "/v1/models/iris/predict", json={"inputs": [IRIS_INPUT] * 5}
    ).status_code


def test_hup_with_a_bad_settings_file_keeps_serving_and_a_good_one_applies(
    serve_environment: dict[str, str], tmp_path: Path
) -> None:
    """Workers use the settings their master validated: a bad edit + HUP keeps the previous
    settings everywhere (the new workers used to re-read the file and exit 78 in a loop), a
    good edit + HUP applies the new ones."""
    port = free_port()
    serve_environment["PLINTH_BIND"] = f"127.0.0.1:{port}"
    del serve_environment["PLINTH_MODELS"]  # from the file (the environment would override it)
    env_file = tmp_path / "plinth.env"
    env_file.write_text("PLINTH_MODELS=iris,sleepy\nPLINTH_MAX_BATCH_SIZE=4\n")
    serve_environment["PLINTH_ENV_FILE"] = str(env_file)
    client = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    served = _start(["plinth", "serve"], serve_environment, tmp_path, client)
    try:
        assert _batch_of_five(served) == 413
        bad_edits = [
            "PLINTH_MODELS=iris,sleepy\nPLINTH_MAX_BATCH_SIZE=0\n",
            # Valid settings, but a model the workers could not load; the larger batch limit
            # beside it must not apply either.
            "PLINTH_MODELS=iris,sleepy,missing\nPLINTH_MAX_BATCH_SIZE=8\n",
            # A model name no file system takes (ENAMETOOLONG): it killed the master.
            f"PLINTH_MODELS=iris,sleepy,{'m' * 300}\nPLINTH_MAX_BATCH_SIZE=8\n",
        ]
        for number, bad in enumerate(bad_edits, start=1):
            _reload(served, env_file, bad)
            log = served.log_path.read_text()
            assert log.count("reload ignored, keeping previous settings") == number, log[-3000:]
            wait_until_ready(served.client, timeout=30)
            assert _batch_of_five(served) == 413
            assert served.client.get("/v1/models").json()["models"][1]["name"] == "sleepy"
        _reload(served, env_file, "PLINTH_MODELS=iris\nPLINTH_MAX_BATCH_SIZE=8\n")
        wait_until_ready(served.client, timeout=30)
        assert _batch_of_five(served) == 200
        assert [model["name"] for model in served.client.get("/v1/models").json()["models"]] == [
            "iris"
        ]
    finally:
        _stop(served)


def test_hup_with_a_changed_bind_keeps_serving_on_the_running_one(
    serve_environment: dict[str, str], tmp_path: Path
) -> None:
    """A reload cannot move the listening socket (under systemd it is systemd's): a changed
    PLINTH_BIND is refused like any bad edit, with one error line saying a restart is needed,
    and the master keeps serving on the address it has. An address it could not bind (a port
    in use, a path that is a file, a directory that is not there) killed the master."""
    port = free_port()
    del serve_environment["PLINTH_MODELS"]  # from the file (the environment would override it)
    env_file = tmp_path / "plinth.env"
    settings = "PLINTH_MODELS=iris,sleepy\nPLINTH_MAX_BATCH_SIZE={}\nPLINTH_BIND={}\n"
    env_file.write_text(settings.format(8, f"127.0.0.1:{port}"))
    serve_environment["PLINTH_ENV_FILE"] = str(env_file)
    client = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    not_a_socket = tmp_path / "not-a-socket"
    not_a_socket.write_text("x")
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        changed_binds = [
            f"127.0.0.1:{taken.getsockname()[1]}",
            f"unix:{not_a_socket}",
            f"unix:{tmp_path}/missing/plinth.sock",
            f"127.0.0.1:{free_port()}",  # free, yet a reload cannot move there either
        ]
        served = _start(["plinth", "serve"], serve_environment, tmp_path, client)
        try:
            assert _batch_of_five(served) == 200
            for number, bind in enumerate(changed_binds, start=1):
                _reload(served, env_file, settings.format(4, bind))
                refused = [
                    line
                    for line in served.log_lines()
                    if line["message"].startswith("reload ignored, keeping previous settings")
                ]
                assert len(refused) == number, served.log_path.read_text()[-3000:]
                assert refused[-1]["level"] == "error"
                assert "PLINTH_BIND" in refused[-1]["message"]
                assert "restart" in refused[-1]["message"]
                wait_until_ready(served.client, timeout=30)
                assert _batch_of_five(served) == 200  # the previous batch limit too
            # The running bind with another setting changed: that reload applies.
            _reload(served, env_file, settings.format(4, f"127.0.0.1:{port}"))
            wait_until_ready(served.client, timeout=30)
            assert _batch_of_five(served) == 413
            assert not (tmp_path / "missing").exists()
            assert not_a_socket.read_text() == "x"
        finally:
            _stop(served)


def test_on_the_journal_each_line_starts_with_its_priority(
    serve_environment: dict[str, str], tmp_path: Path
) -> None:
    """Under systemd (stdout named in $JOURNAL_STREAM) every line, the master's and the
    workers', starts with its syslog priority, which journald stores as the line's own (so a
    warning is kept apart from, and rate-limited apart from, the access lines); the rest of
    the line is the JSON object. A file here stands for the journal's stream."""
    port = free_port()
    serve_environment["PLINTH_BIND"] = f"127.0.0.1:{port}"
    serve_environment["PLINTH_MODELS"] = "iris,faulty"
    log_path = tmp_path / "serve.log"
    log_path.touch()  # _start reopens it: same inode
    found = log_path.stat()
    serve_environment["JOURNAL_STREAM"] = f"{found.st_dev}:{found.st_ino}"
    client = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    served = _start(["plinth", "serve"], serve_environment, tmp_path, client)
    try:
        assert client.get("/healthz").status_code == 200
        faulty = client.post("/v1/models/faulty/predict", json={"inputs": [{"text": "nan"}]})
        assert faulty.status_code == 500
        time.sleep(0.5)
    finally:
        _stop(served)
    lines = [line for line in log_path.read_text().splitlines() if line]
    prefixes = {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>", "critical": "<2>"}
    entries = []
    for line in lines:
        prefix, _, text = line.partition(">")
        entry = json.loads(text)
        assert prefix + ">" == prefixes[entry["level"]], line
        entries.append(entry)
    by_level = {entry["level"] for entry in entries}
    assert {"info", "error"} <= by_level, by_level  # the faulty model's 500 is an error
    assert any(entry["logger"].startswith("gunicorn") for entry in entries)  # the master too


def test_elsewhere_lines_are_plain_json(serve_environment: dict[str, str], tmp_path: Path):
    """$JOURNAL_STREAM inherited by a process whose stdout went elsewhere (a shell started
    from a unit, redirected to a file) does not make it write priorities."""
    serve_environment["JOURNAL_STREAM"] = "1:2"  # not the file's
    log = tmp_path / "check.log"
    with log.open("wb") as out:
        code = subprocess.run(
            ["python", "-c", "from service.logs import configure_logging as c; import logging;"
             "c('info'); logging.getLogger('x').warning('w')"],
            env=serve_environment, stdout=out, stderr=subprocess.STDOUT,
        ).returncode  # fmt: skip
    assert code == 0, log.read_text()
    assert json.loads(log.read_text())["level"] == "warning"
