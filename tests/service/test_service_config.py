"""Bad configuration is refused at startup with one line naming the variable, exit 78."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_support import subprocess_env

from service.cli import main

GOOD_URL = "postgresql+psycopg://plinth:s3cr3t-value@db.internal:5432/plinth"
PREFIX = "plinth: configuration error: "


def run(command: list[str], **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=subprocess_env(**environment), capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def check_config(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]):
    """``plinth check-config`` in process (same code path as the console script, minus
    two seconds of interpreter start per case); a few cases below also run it for real."""

    def invoke(**environment: str) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as patch:
            for name in [n for n in os.environ if n.startswith("PLINTH_")]:
                patch.delenv(name)
            for name, value in environment.items():
                patch.setenv(name, value)
            code = main(["check-config"])
        captured = capfd.readouterr()
        return subprocess.CompletedProcess(
            ["plinth", "check-config"], code, captured.out, captured.err
        )

    return invoke


PRODUCTION_CASES = [
    ({}, "PLINTH_DATABASE_URL is not set"),
    ({"PLINTH_DATABASE_URL": ""}, "PLINTH_DATABASE_URL is not set"),
    (
        {"PLINTH_DATABASE_URL": "postgresql+psycopg://plinth:CHANGE_ME@db/plinth"},
        "PLINTH_DATABASE_URL contains a placeholder; set the real secret",
    ),
    (
        {"PLINTH_DATABASE_URL": "postgresql+psycopg://plinth:changeme@db/plinth"},
        "PLINTH_DATABASE_URL contains a placeholder; set the real secret",
    ),
    (
        {"PLINTH_DATABASE_URL": "sqlite:///plinth.db"},
        "PLINTH_DATABASE_URL must be a PostgreSQL URL (postgresql+psycopg://...)",
    ),
    (
        {"PLINTH_DATABASE_URL": "mysql://plinth:s3cr3t@db/plinth"},
        "PLINTH_DATABASE_URL must be a PostgreSQL URL (postgresql+psycopg://...)",
    ),
    (
        {"PLINTH_DATABASE_URL": "not a url"},
        "PLINTH_DATABASE_URL is not a valid database URL",
    ),
    (
        {
            "PLINTH_DATABASE_URL": GOOD_URL,
            "PLINTH_MIGRATION_DATABASE_URL": "postgresql+psycopg://owner:<password>@db/plinth",
        },
        "PLINTH_MIGRATION_DATABASE_URL contains a placeholder; set the real secret",
    ),
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_MAX_BATCH_SIZE": "0"},
        "PLINTH_MAX_BATCH_SIZE input should be greater than or equal to 1",
    ),
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_WORKERS": "many"},
        "PLINTH_WORKERS input should be a valid integer, unable to parse string as an integer",
    ),
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_MODELS": "iris,missing"},
        "PLINTH_MODELS cannot be served: model 'missing': manifest not found at ",
    ),
    # Values a worker cannot run with: inf overflowed math.ceil, PostgreSQL's statement_timeout
    # is an int4, and Gunicorn cannot bind a port above 65535 (or a bind without one).
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_DB_POOL_TIMEOUT_SECONDS": "inf"},
        "PLINTH_DB_POOL_TIMEOUT_SECONDS input should be a finite number",
    ),
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_PREDICT_TIMEOUT_SECONDS": "nan"},
        "PLINTH_PREDICT_TIMEOUT_SECONDS input should be a finite number",
    ),
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_DB_STATEMENT_TIMEOUT_MS": "99999999999"},
        "PLINTH_DB_STATEMENT_TIMEOUT_MS input should be less than or equal to 2147483647",
    ),
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_BIND": "127.0.0.1:99999"},
        "PLINTH_BIND must have a port between 1 and 65535",
    ),
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_BIND": "garbage"},
        "PLINTH_BIND must be host:port, unix:/path or fd://<descriptor number>",
    ),
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_BIND": "127.0.0.1:http"},
        "PLINTH_BIND must be host:port, unix:/path or fd://<descriptor number>",
    ),
    # A final newline (a quoted "\n" in the env file) passed, into the socket's path.
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_BIND": "unix:/run/plinth/plinth.sock\n"},
        "PLINTH_BIND must be host:port, unix:/path or fd://<descriptor number>",
    ),
    # A misspelt libpq parameter refused every connection at the first request (a 500).
    (
        {"PLINTH_DATABASE_URL": GOOD_URL + "?sslmod=require"},
        "PLINTH_DATABASE_URL has an unknown connection parameter 'sslmod'",
    ),
    # What only the engine parses (a port list, a port that is no number): every worker died.
    (
        {"PLINTH_DATABASE_URL": GOOD_URL + "?port=abc"},
        "PLINTH_DATABASE_URL has connection arguments the driver refuses",
    ),
    # A huge number overflowed in Gunicorn's master (its main loop died, then the service).
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_TIMEOUT_SECONDS": "1" + "0" * 400},
        "PLINTH_TIMEOUT_SECONDS input should be less than or equal to 3600",
    ),
    (
        {"PLINTH_DATABASE_URL": GOOD_URL, "PLINTH_WORKERS": "100000"},
        "PLINTH_WORKERS input should be less than or equal to 256",
    ),
]


@pytest.mark.parametrize(("environment", "line"), PRODUCTION_CASES)
def test_check_config_refuses_bad_production_settings(
    check_config, environment: dict, line: str
) -> None:
    result = check_config(PLINTH_ENVIRONMENT="production", **environment)
    assert result.returncode == 78
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX + line)
    assert "s3cr3t" not in result.stderr


@pytest.mark.parametrize(
    "bind",
    ["127.0.0.1:8000", "0.0.0.0:1", "[::1]:65535", "localhost:8000", "unix:/run/p.sock", "fd://3"],
)
def test_bind_accepts_what_gunicorn_serves_on(check_config, bind: str) -> None:
    result = check_config(PLINTH_DATABASE_URL=GOOD_URL, PLINTH_BIND=bind)
    assert result.returncode == 0, result.stderr


def test_check_config_refuses_a_unix_socket_path_gunicorn_cannot_bind(
    check_config, tmp_path: Path
) -> None:
    """Cheap checks only (check-config runs beside the service, which holds its own port):
    a path that is there and is no socket, or a directory that is not there."""
    regular_file = tmp_path / "plinth.sock"
    regular_file.write_text("not a socket")
    missing_directory = tmp_path / "missing" / "plinth.sock"
    cases = {
        f"unix:{regular_file}": f"PLINTH_BIND names {regular_file}, which is not a socket",
        f"unix:{missing_directory}": "PLINTH_BIND names a socket in a directory that does not "
        f"exist: {missing_directory.parent}",
    }
    for bind, line in cases.items():
        result = check_config(PLINTH_DATABASE_URL=GOOD_URL, PLINTH_BIND=bind)
        assert result.returncode == 78, bind
        assert result.stderr.splitlines() == [PREFIX + line]
    # A socket left by a previous run is fine: Gunicorn replaces it.
    with socket.socket(socket.AF_UNIX) as previous:
        previous.bind(str(tmp_path / "previous.sock"))
    for fine in [tmp_path / "previous.sock", tmp_path / "new.sock"]:
        result = check_config(PLINTH_DATABASE_URL=GOOD_URL, PLINTH_BIND=f"unix:{fine}")
        assert result.returncode == 0, result.stderr


@pytest.fixture
def port_in_use() -> Iterator[int]:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize(
    "case",
    [
        "port-in-use",
        "unencodable-name",
        "byte-in-name",
        "regular-file",
        "missing-directory",
        "closed-fd",
        "fd-out-of-range",
    ],
)
def test_serve_on_a_bind_it_cannot_take_is_one_line(
    case: str, port_in_use: int, tmp_path: Path
) -> None:
    """Gunicorn retried a port in use for five seconds and exited 1 after ten log lines, and a
    path that is a file (or a descriptor that is not open) ended in a traceback."""
    regular_file = tmp_path / "plinth.sock"
    regular_file.write_text("not a socket")
    bind, reason = {
        "port-in-use": (f"127.0.0.1:{port_in_use}", "cannot be bound: Address already in use"),
        # IDNA refuses an empty label: "encoding of hostname failed", a traceback.
        "unencodable-name": ("\u00fc..x:8799", "its host name cannot be encoded"),
        "byte-in-name": ("loc\udcffalhost:8799", "is not UTF-8 text"),  # the byte 0xff
        "regular-file": (f"unix:{regular_file}", "which is not a socket"),
        "missing-directory": (f"unix:{tmp_path}/missing/p.sock", "directory that does not exist"),
        "closed-fd": ("fd://987", "names a descriptor that is not an open socket"),
        # Past a C int: os.fstat raised OverflowError, a traceback (exit 1).
        "fd-out-of-range": (
            "fd://99999999999999999999",
            "names a descriptor that is not an open socket",
        ),
    }[case]
    result = run(["plinth", "serve"], PLINTH_DATABASE_URL=GOOD_URL, PLINTH_BIND=bind)
    assert result.returncode == 78, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX + "PLINTH_BIND ")
    assert reason in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "url",
    [
        # '@' and ':' in a password that is not percent-encoded: the rest reads as a port.
        "postgresql+psycopg://plinth:s3cr3t@ss:w0rd@db/plinth",
        "postgresql+psycopg://plinth:w0rd@db:notaport/plinth",
        # No ':' after the second '@': the rest of the password became the host name, which
        # `plinth migrate` then printed in its connection error.
        "postgresql+psycopg://plinth:s3cr@tPassw0rd@db.internal:5432/plinth",
        # A '/' after the second '@': the host became 'dor', the rest of the password the
        # database name, and the connection error printed "failed to resolve host 'dor'".
        "postgresql+psycopg://plinth:Tr0ub@dor/w0rd@db.example.com:5432/plinth",
        # A '?' after the second '@': the rest of the password became a connection parameter,
        # whose name the unknown-parameter error quoted.
        "postgresql+psycopg://plinth:s3cr@t?w0rd@db.internal:5432/plinth",
        "postgresql+psycopg://plinth:s3cr@t?sslmode=w0rd@db.internal:5432/plinth",
        # '@' in the user name too: two '@' before the host, however the parts are read.
        "postgresql+psycopg://plin@th:w0rd@db.internal:5432/plinth",
    ],
)
@pytest.mark.parametrize("variable", ["PLINTH_DATABASE_URL", "PLINTH_MIGRATION_DATABASE_URL"])
def test_malformed_database_url_is_one_line_without_the_password(
    check_config, url: str, variable: str
) -> None:
    result = check_config(**{"PLINTH_DATABASE_URL": GOOD_URL, variable: url})
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        PREFIX + f"{variable} is not a valid database URL; percent-encode special characters "
        "in the password"
    ]
    assert "w0rd" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://plinth:Tr0ub%40dor%2F3x@db.example.com:5432/plinth",
        "postgresql+psycopg://plinth:s3cr3t@db.example.com:5432/pl%40inth",  # decoded: pl@inth
        "postgresql+psycopg:///plinth?host=/run/postgresql&user=plinth@corp",  # the only '@'
    ],
)
def test_database_url_with_an_encoded_or_single_at_is_accepted(check_config, url: str) -> None:
    result = check_config(PLINTH_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr


# "\udcff" is how Python holds the byte 0xff from the environment (surrogateescape); the
# child gets the byte itself, as from an Environment= line written in Latin-1.
@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://plinth:p\udcffw@127.0.0.1:5432/plinth",  # passed, then a traceback
        "postgresql+psycopg://plinth:pw@127.0.0.1:5432/plinth?ssl\udcffmode=require",
    ],
    ids=["byte-in-password", "byte-in-parameter"],
)
def test_a_value_that_is_not_utf8_is_one_line(url: str) -> None:
    result = run(["plinth", "check-config"], PLINTH_DATABASE_URL=url)
    assert result.returncode == 78, result.stdout + result.stderr
    assert result.stderr.splitlines() == [PREFIX + "PLINTH_DATABASE_URL is not UTF-8 text"]


def test_a_lower_case_name_is_checked_for_utf8_too() -> None:
    # pydantic-settings reads names case-insensitively, so plinth_log_level is the level; the
    # UTF-8 check looked at upper-case names only and let the byte through to a traceback.
    result = run(
        ["plinth", "check-config"], PLINTH_DATABASE_URL=GOOD_URL, plinth_bind="loc\udcffal:1"
    )
    assert result.returncode == 78, result.stdout + result.stderr
    assert result.stderr.splitlines() == [PREFIX + "plinth_bind is not UTF-8 text"]


def make_unreadable(path: Path) -> None:
    """``path`` becomes a file that exists but cannot be read, even by root (the suite's user
    in CI): mode 000 stops anyone else, a write-only sysctl stops root too."""
    path.unlink(missing_ok=True)
    if os.geteuid() == 0:
        path.symlink_to("/proc/sys/vm/drop_caches")
    else:
        path.write_text("unreadable")
        path.chmod(0)
    try:
        path.read_bytes()
    except PermissionError:
        return
    pytest.skip(f"cannot make {path} unreadable here")


def test_unreadable_or_undecodable_env_file_is_one_line(check_config, tmp_path: Path) -> None:
    env_file = tmp_path / "plinth.env"
    # Latin-1, as an editor might save it: not UTF-8.
    env_file.write_bytes(
        f"PLINTH_DATABASE_URL={GOOD_URL}\nPLINTH_MODELS=iris  # écrit\n".encode("latin-1")
    )
    result = check_config(PLINTH_ENV_FILE=str(env_file))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        PREFIX + f"PLINTH_ENV_FILE names a file that is not UTF-8: {env_file}"
    ]
    make_unreadable(env_file)
    result = check_config(PLINTH_ENV_FILE=str(env_file))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        PREFIX + f"PLINTH_ENV_FILE names a file that cannot be read (Permission denied): {env_file}"
    ]


# Only an env file can hold a NUL byte (the environment cannot). Each passed check-config: in
# the URL, libpq read the connection string only up to the NUL and dropped the rest unseen
# (the port, the user, the service's statement and connect timeouts), so the service connected
# elsewhere or without its limits; in the bind, a traceback.
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PLINTH_DATABASE_URL", "postgresql+psycopg://plinth:s3cr3t\0@db.internal:5432/plinth"),
        ("PLINTH_DATABASE_URL", "postgresql+psycopg://plinth:s3cr3t@db.internal:5432/pl\0inth"),
        ("PLINTH_BIND", "unix:/run/plinth/pl\0inth.sock"),
    ],
    ids=["in-password", "in-database-name", "in-bind"],
)
def test_a_nul_byte_in_the_env_file_is_one_line(
    check_config, tmp_path: Path, variable: str, value: str
) -> None:
    env_file = tmp_path / "plinth.env"
    env_file.write_text(f"PLINTH_DATABASE_URL={GOOD_URL}\n{variable}={value}\n")
    result = check_config(PLINTH_ENV_FILE=str(env_file))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [PREFIX + f"{variable} contains a null byte (\\0)"]
    assert "s3cr3t" not in result.stdout + result.stderr


@pytest.mark.parametrize("unreadable", ["manifest.json", "weights.json"])
def test_unreadable_model_file_is_one_line(check_config, tmp_path: Path, unreadable: str) -> None:
    from service_support import artifacts_with_test_models

    artifacts = artifacts_with_test_models(tmp_path)
    make_unreadable(artifacts / "iris" / unreadable)
    result = check_config(PLINTH_DATABASE_URL=GOOD_URL, PLINTH_ARTIFACTS_DIR=str(artifacts))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        PREFIX + f"PLINTH_MODELS cannot be served: model 'iris': cannot read "
        f"{artifacts / 'iris' / unreadable} (Permission denied)"
    ]


def test_environment_must_be_known(check_config) -> None:
    result = check_config(PLINTH_ENVIRONMENT="prod", PLINTH_DATABASE_URL=GOOD_URL)
    assert result.returncode == 78
    assert result.stderr.startswith(PREFIX + "PLINTH_ENVIRONMENT input should be ")


def test_placeholders_are_tolerated_outside_production(check_config) -> None:
    result = check_config(
        PLINTH_ENVIRONMENT="development",
        PLINTH_DATABASE_URL="postgresql+psycopg://plinth:changeme@localhost/plinth",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plinth: configuration ok (environment=development)"


def test_env_file_is_read_and_must_exist(check_config, tmp_path: Path) -> None:
    env_file = tmp_path / "plinth.env"
    env_file.write_text(f"PLINTH_ENVIRONMENT=production\nPLINTH_DATABASE_URL={GOOD_URL}\n")
    assert check_config(PLINTH_ENV_FILE=str(env_file)).returncode == 0
    env_file.write_text("PLINTH_ENVIRONMENT=production\nPLINTH_DATABASE_URL=sqlite://\n")
    result = check_config(PLINTH_ENV_FILE=str(env_file))
    assert result.stderr.startswith(PREFIX + "PLINTH_DATABASE_URL must be a PostgreSQL URL")
    missing = check_config(PLINTH_ENV_FILE=str(tmp_path / "nope.env"))
    assert missing.returncode == 78
    assert missing.stderr.startswith(PREFIX + "PLINTH_ENV_FILE names a file that does not exist")


def test_tampered_artifact_is_refused(check_config, tmp_path: Path) -> None:
    from service_support import artifacts_with_test_models

    artifacts = artifacts_with_test_models(tmp_path)
    weights = artifacts / "iris" / "weights.json"
    tampered = json.loads(weights.read_text())
    tampered["intercepts"][0] += 1
    weights.write_text(json.dumps(tampered))
    result = check_config(PLINTH_DATABASE_URL=GOOD_URL, PLINTH_ARTIFACTS_DIR=str(artifacts))
    assert result.returncode == 78
    assert result.stderr.startswith(
        PREFIX + "PLINTH_MODELS cannot be served: model 'iris': artifact weights.json sha256 "
        "mismatch (manifest "
    )
    weights.unlink()
    result = check_config(PLINTH_DATABASE_URL=GOOD_URL, PLINTH_ARTIFACTS_DIR=str(artifacts))
    assert result.stderr.startswith(
        PREFIX + "PLINTH_MODELS cannot be served: model 'iris': artifact not found at "
    )


@pytest.mark.parametrize(
    "command",
    [
        ["plinth", "check-config"],
        ["plinth", "serve"],
        [sys.executable, "-c", "import service.asgi"],
    ],
    ids=["check-config", "plinth-serve", "asgi-import"],
)
def test_startup_paths_refuse_the_same_way(command: list[str]) -> None:
    result = run(
        command,
        PLINTH_ENVIRONMENT="production",
        PLINTH_DATABASE_URL="postgresql+psycopg://plinth:placeholder@db/plinth",
        PLINTH_BIND="127.0.0.1:1",
    )
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        PREFIX + "PLINTH_DATABASE_URL contains a placeholder; set the real secret"
    ]
