"""A real ACME server for the rehearsal: Debian's pebble, with pebble-challtestsrv as its DNS.

Both run on the control machine, bound to the gateway address of the rehearsal's veth, so the
host reaches the ACME directory at https://GATEWAY:PORT/dir and pebble validates HTTP-01 against
the host's port 80 (challtestsrv answers every name with the host's address). Validation is
real: PEBBLE_VA_ALWAYS_VALID is never set.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from infra.rehearsal import proc
from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.state import write_file

PEBBLE_MARKER = "pebble"
CHALLTESTSRV_MARKER = "pebble-challtestsrv"


def make_listener_certs(workdir: Path, ca_pem: Path, gateway: str) -> tuple[Path, Path]:
    """A throwaway CA and a server certificate for pebble's own HTTPS listener (SAN = gateway).
    Debian's pebble ships none. Key usages and key identifiers are set because strict
    verifiers (Python 3.13's default context on trixie) reject certificates without them."""
    workdir.mkdir(mode=0o700, exist_ok=True)
    ca_key, key, csr, cert = (workdir / n for n in ("ca.key", "key.pem", "cert.csr", "cert.pem"))
    extfile = workdir / "server.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    proc.run(
        [
            *("openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_pem)),
            *("-days", "30", "-subj", "/CN=plinth rehearsal pebble listener CA"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        ],
        what="making pebble's listener CA",
    )
    proc.run(
        [
            "openssl",
            "req",
            "-new",
            *ec,
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            "/CN=pebble",
        ],
        what="making pebble's listener key",
    )
    write_file(
        extfile,
        f"subjectAltName=IP:{gateway}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n",
    )
    proc.run(
        [
            *("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_pem)),
            *("-CAkey", str(ca_key), "-CAserial", str(workdir / "ca.srl"), "-CAcreateserial"),
            *("-days", "30"),
            *("-out", str(cert), "-extfile", str(extfile)),
        ],
        what="signing pebble's listener certificate",
    )
    return cert, key


def write_config(path: Path, *, gateway: str, ports: dict[str, int], cert: Path, key: Path):
    config = {
        "pebble": {
            "listenAddress": f"{gateway}:{ports['pebble']}",
            "managementListenAddress": f"{gateway}:{ports['pebble_management']}",
            "certificate": str(cert),
            "privateKey": str(key),
            # Validate against the host's own nginx, as Let's Encrypt would.
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            # 90 days like Let's Encrypt (pebble's default is 5 years, which Mozilla's
            # profile, and so the TLS tests' sslyze check, refuses).
            "certificateValidityPeriod": 90 * 24 * 3600,
        }
    }
    write_file(path, json.dumps(config, indent=2) + "\n")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
    env["PEBBLE_VA_NOSLEEP"] = "1"  # no random 0-15 s sleep before each validation
    env["PEBBLE_WFE_NONCEREJECT"] = "0"  # no random badNonce rejections: keep deploys stable
    return env


def start(state_dir: Path, workdir: Path, *, gateway: str, address: str, ports: dict[str, int]):
    """Start challtestsrv then pebble, detached; return their PIDs."""
    dns = f"{gateway}:{ports['dns']}"
    challtestsrv_pid = proc.spawn_detached(
        [
            "pebble-challtestsrv",
            "-defaultIPv4",
            address,
            "-defaultIPv6",
            "",
            "-dns01",
            dns,
            "-management",
            f"{gateway}:{ports['challtestsrv_management']}",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ],
        state_dir / "challtestsrv.log",
        env=_env(),
    )
    pebble_pid = proc.spawn_detached(
        ["pebble", "-config", str(workdir / "pebble-config.json"), "-dnsserver", dns],
        state_dir / "pebble.log",
        env=_env(),
    )
    return challtestsrv_pid, pebble_pid


def _context(ca_pem: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_pem))


def wait_ready(directory_url: str, ca_pem: Path, pids: dict[str, int], logs: Path, timeout=20.0):
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for name, pid in pids.items():
            if not proc.is_running(pid, name):
                raise RehearsalError(f"{name} exited: {_last_line(logs / _log_name(name))}")
        try:
            # Our own https:// URL (built from the gateway address), never user input.
            with urllib.request.urlopen(  # noqa: S310
                directory_url, context=_context(ca_pem), timeout=3
            ) as r:
                if r.status == 200 and "newAccount" in json.loads(r.read()):
                    return
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RehearsalError(f"pebble did not answer at {directory_url} within {timeout:g}s: {last}")


def fetch_root(management_url: str, ca_pem: Path) -> bytes:
    """Pebble makes a new issuing root at every start: fetch the current one."""
    try:
        with urllib.request.urlopen(  # noqa: S310 (our own https:// URL)
            f"{management_url}/roots/0", context=_context(ca_pem), timeout=10
        ) as response:
            pem = response.read()
    except (OSError, urllib.error.URLError) as exc:
        raise RehearsalError(f"cannot fetch pebble's root from {management_url}: {exc}") from None
    if b"BEGIN CERTIFICATE" not in pem:
        raise RehearsalError(f"pebble's {management_url}/roots/0 did not return a certificate")
    return pem


def _log_name(marker: str) -> str:
    return "challtestsrv.log" if marker == CHALLTESTSRV_MARKER else "pebble.log"


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][-200:] if lines else "no output"


def stop(pid: int | None, marker: str) -> None:
    proc.stop(pid, marker, timeout=5)
