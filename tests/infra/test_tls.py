"""TLS on the rehearsal host: a real ACME certificate from pebble, Mozilla's intermediate profile,
security headers on every response, a renewal with no restart and no failed request."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

pytestmark = pytest.mark.infra

CERT_DIR = "/etc/letsencrypt/live/plinth"
HOST_CA_BUNDLE = "/etc/letsencrypt/plinth-acme-ca-bundle.pem"
SECURITY_HEADERS = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "permissions-policy": None,  # present; its value is data
}


# -- helpers ---------------------------------------------------------------------------------


def _context(root: Path, **versions) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(root))
    for attribute, value in versions.items():
        setattr(context, attribute, value)
    return context


def _handshake(target, context: ssl.SSLContext, alpn=None) -> ssl.SSLSocket:
    if alpn:
        context.set_alpn_protocols(alpn)
    sock = socket.create_connection((target["address"], 443), timeout=5)
    return context.wrap_socket(sock, server_hostname=target["domain"])


def _served_certificate(target) -> x509.Certificate:
    with _handshake(target, _context(target["root"])) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def _legacy_context(maximum: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    """A client that offers only old protocols or weak suites (unverified: the handshake is
    what is tested)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = maximum
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return context


def _curl(target, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *("curl", "-sS", "--max-time", "20", "--cacert", str(target["root"])),
            *("--resolve", f"{target['domain']}:443:{target['address']}"),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )


def _https_headers(target, path: str, *extra: str) -> tuple[int, dict[str, str]]:
    out = _curl(target, "-o", "/dev/null", "-D", "-", *extra, f"https://{target['domain']}{path}")
    status_line, *lines = [line for line in out.stdout.splitlines() if line.strip()]
    headers = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(rehearsal):
    """Where to reach the deployed host over HTTPS, and the root its chain must verify against."""
    info = json.loads(Path(rehearsal["host_json"]).read_text())
    return {
        "address": info["address"],
        "domain": info["domain"],
        "root": Path(info["acme_root"]),
        "acme_directory": info["acme_directory"],
        "acme_ca_bundle": Path(info["acme_ca_bundle"]),
    }


# -- the certificate -------------------------------------------------------------------------


def test_certificate_is_from_the_configured_acme_ca_for_the_domain(target):
    cert = _served_certificate(target)  # verifies the chain against acme-root.pem
    names = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert names.get_values_for_type(x509.DNSName) == [target["domain"]]
    # The issuer is the intermediate the configured ACME directory (pebble) signs with now.
    management = target["acme_directory"].rsplit(":", 1)[0] + ":15000"
    ca = ssl.create_default_context(cafile=str(target["acme_ca_bundle"]))
    with urllib.request.urlopen(f"{management}/intermediates/0", context=ca, timeout=10) as r:  # noqa: S310
        intermediate = x509.load_pem_x509_certificate(r.read())
    assert cert.issuer == intermediate.subject
    root = x509.load_pem_x509_certificate(target["root"].read_bytes())
    assert intermediate.issuer == root.subject


def test_chain_verifies_against_acme_root_with_the_domain_name(target):
    with _handshake(target, _context(target["root"])) as tls:
        assert tls.getpeercert()["subjectAltName"] == (("DNS", target["domain"]),)


# -- protocols and ciphers -------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_refused(target, version):
    with pytest.raises(ssl.SSLError):
        _handshake(target, _legacy_context(version, "ALL")).close()


@pytest.mark.parametrize(
    "ciphers",
    [
        pytest.param("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA", id="cbc"),
        pytest.param("AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA", id="rsa-key-exchange"),
        pytest.param("DHE-RSA-AES128-GCM-SHA256:DHE-RSA-CHACHA20-POLY1305", id="dhe"),
    ],
)
def test_tls_1_2_with_only_weak_suites_refused(target, ciphers):
    # The same client with an AEAD ECDHE suite connects: the refusal is the suites, not TLS 1.2.
    good = _legacy_context(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256")
    with _handshake(target, good) as tls:
        assert tls.version() == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        _handshake(target, _legacy_context(ssl.TLSVersion.TLSv1_2, ciphers)).close()


def test_tls_1_3_accepted_and_http2_negotiated(target):
    context = _context(target["root"], minimum_version=ssl.TLSVersion.TLSv1_3)
    with _handshake(target, context, alpn=["h2", "http/1.1"]) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "h2"
    out = _curl(target, "--http2", "-o", "/dev/null", "-w", "%{http_version}",
                f"https://{target['domain']}/readyz")
    assert out.stdout == "2"


def test_mozilla_intermediate_profile_per_sslyze(target):
    from sslyze import (
        CertificateInfoExtraArgument,
        Scanner,
        ScanCommandsExtraArguments,
        ServerNetworkConfiguration,
        ServerNetworkLocation,
        ServerScanRequest,
    )
    from sslyze.mozilla_tls_profile.tls_config_checker import (
        SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        MozillaTlsConfiguration,
        TlsConfigurationEnum,
        check_server_against_tls_configuration,
    )

    request = ServerScanRequest(
        server_location=ServerNetworkLocation(target["domain"], 443, target["address"]),
        network_configuration=ServerNetworkConfiguration(target["domain"]),
        scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=target["root"])
        ),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    # Raises ServerNotCompliantWithTlsConfiguration listing every deviation.
    check_server_against_tls_configuration(
        result, MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    )
    suites = result.scan_result.tls_1_2_cipher_suites.result.accepted_cipher_suites
    assert suites and all("ECDHE" in s.cipher_suite.name for s in suites)


# -- HTTP: headers and redirects -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "extra", "status"),
    [
        pytest.param("/readyz", (), 200, id="200"),
        pytest.param("/no-such-route", (), 404, id="404"),
        pytest.param(
            "/readyz",
            ("-X", "POST", "-H", "Content-Type: application/json",
             "-H", f"Content-Length: {256 * 1024 * 1024}", "--data-binary", "{}"),
            413,
            id="413-from-nginx",
        ),
    ],
)
def test_hsts_and_security_headers_on_every_response(target, path, extra, status):
    got_status, headers = _https_headers(target, path, *extra)
    assert got_status == status
    for name, value in SECURITY_HEADERS.items():
        assert name in headers, f"{name} missing on a {status}"
        if value is not None:
            assert headers[name] == value


def test_http_redirects_to_https_with_308_except_acme_path(target, host):
    domain, address = target["domain"], target["address"]
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
         "-H", f"Host: {domain}", f"http://{address}/readyz?x=1"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout == f"308 https://{domain}/readyz?x=1"

    token = "plinth-tls-test-token"
    webroot = "/var/www/letsencrypt/.well-known/acme-challenge"
    host.run_expect([0], f"mkdir -p {webroot} && echo ok-{token} > {webroot}/{token}")
    try:
        conn = http.client.HTTPConnection(address, 80, timeout=5)
        conn.request("GET", f"/.well-known/acme-challenge/{token}", headers={"Host": domain})
        response = conn.getresponse()
        assert (response.status, response.read().strip()) == (200, f"ok-{token}".encode())
    finally:
        host.run(f"rm -f {webroot}/{token}")


# -- renewal ---------------------------------------------------------------------------------


def test_certbot_timer_enabled_and_trusts_the_acme_ca(host):
    assert host.service("certbot.timer").is_enabled
    assert host.service("certbot.timer").is_running
    environment = host.check_output("systemctl show certbot.service -p Environment")
    assert f"REQUESTS_CA_BUNDLE={HOST_CA_BUNDLE}" in environment
    hook = host.file("/etc/letsencrypt/renewal-hooks/deploy/reload-nginx")
    assert hook.mode == 0o755 and "nginx -t" in hook.content_string


def test_forced_renewal_serves_new_serial_same_master_no_failed_request(target, host):
    before = _served_certificate(target).serial_number
    master = host.file("/run/nginx.pid").content_string.strip()
    failures: list[str] = []
    count = 0
    stop = threading.Event()

    def hammer():
        nonlocal count
        context = _context(target["root"])
        while not stop.is_set():
            try:
                conn = http.client.HTTPSConnection(target["address"], 443, timeout=5, context=context)
                conn.sock = _handshake(target, context)
                conn.request("GET", "/readyz", headers={"Host": target["domain"]})
                status = conn.getresponse().status
                conn.close()
                if status != 200:
                    failures.append(f"status {status}")
            except OSError as exc:
                failures.append(repr(exc))
            count += 1

    worker = threading.Thread(target=hammer, daemon=True)
    worker.start()
    try:
        host.run_expect(
            [0],
            f"REQUESTS_CA_BUNDLE={HOST_CA_BUNDLE} certbot renew --force-renewal "
            "--cert-name plinth --non-interactive --quiet",
        )
        deadline = time.monotonic() + 10
        while _served_certificate(target).serial_number == before:
            assert time.monotonic() < deadline, "the renewed certificate was never served"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(10)
    assert host.file("/run/nginx.pid").content_string.strip() == master
    assert count > 10
    assert failures == []
