"""TLS on the rehearsal host: a real ACME certificate from pebble, Mozilla's intermediate profile,
security headers on every response, a renewal with no restart and no failed request."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from infra.deploys.tls import TLS_DEFAULTS
from tests.infra.conftest import run_deploy

pytestmark = pytest.mark.infra

HOST_CA_BUNDLE = "/etc/letsencrypt/plinth-acme-ca-bundle.pem"
ACME_WEBROOT = "/var/www/letsencrypt"
SECURITY_HEADERS = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "permissions-policy": None,  # present; its value is data
}


# -- helpers ---------------------------------------------------------------------------------


def _verifying_context(root: Path, **settings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(root))
    for attribute, value in settings.items():
        setattr(context, attribute, value)
    return context


def _legacy_context(maximum: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    """A client offering only old protocols or only weak suites; unverified, since what is
    tested is whether the server agrees to the handshake at all."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():  # offering TLS 1.0/1.1 is the point: Python warns of it
        warnings.simplefilter("ignore", DeprecationWarning)
        context.maximum_version = maximum
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return context


def _handshake(target, context: ssl.SSLContext, alpn=None) -> ssl.SSLSocket:
    if alpn:
        context.set_alpn_protocols(alpn)
    sock = socket.create_connection((target["address"], 443), timeout=5)
    try:
        return context.wrap_socket(sock, server_hostname=target["domain"])
    except BaseException:
        sock.close()
        raise


def _served_certificate(target) -> x509.Certificate:
    with _handshake(target, _verifying_context(target["root"])) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def _fetch(url: str, cafile: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(cafile))
    with urllib.request.urlopen(url, context=context, timeout=10) as response:  # noqa: S310
        return response.read()


def _curl(target, *args: str) -> str:
    return subprocess.run(
        [
            *("curl", "-sS", "--max-time", "20", "--cacert", str(target["root"])),
            *("--resolve", f"{target['domain']}:443:{target['address']}"),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _https_response_headers(target, path: str, *curl_args: str) -> tuple[int, dict[str, str]]:
    url = f"https://{target['domain']}{path}"
    out = _curl(target, "-o", "/dev/null", "-D", "-", *curl_args, url)
    status_line, *lines = [line for line in out.splitlines() if line.strip()]
    headers = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def _https_get_status(target, context: ssl.SSLContext) -> int:
    """One request on a new connection (a new handshake each time, so a renewal shows)."""
    conn = http.client.HTTPSConnection(target["address"], 443, timeout=5, context=context)
    conn.sock = _handshake(target, context)
    try:
        conn.request("GET", "/readyz", headers={"Host": target["domain"]})
        return conn.getresponse().status
    finally:
        conn.close()


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(rehearsal, first_deploy):
    """Where the deployed host answers HTTPS, and what its certificate must chain to."""
    return {
        "address": rehearsal["address"],
        "domain": rehearsal["domain"],
        "root": Path(rehearsal["acme_root"]),
        "acme_ca_bundle": Path(rehearsal["acme_ca_bundle"]),
        "acme_management": rehearsal["acme_management"],
    }


# -- the certificate -------------------------------------------------------------------------


def test_certificate_is_from_the_configured_acme_ca_and_names_the_domain(target):
    cert = _served_certificate(target)  # verified against acme-root.pem, for the domain
    names = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert names.get_values_for_type(x509.DNSName) == [target["domain"]]
    # Issued by the intermediate the configured ACME server (pebble) signs with right now.
    intermediate = x509.load_pem_x509_certificate(
        _fetch(f"{target['acme_management']}/intermediates/0", target["acme_ca_bundle"])
    )
    assert cert.issuer == intermediate.subject
    root = x509.load_pem_x509_certificate(target["root"].read_bytes())
    assert intermediate.issuer == root.subject


def test_chain_verifies_against_acme_root_for_the_domain(target):
    with _handshake(target, _verifying_context(target["root"])) as tls:
        assert ("DNS", target["domain"]) in tls.getpeercert()["subjectAltName"]


# -- protocols and ciphers -------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=str)
def test_tls_1_0_and_1_1_refused(target, version):
    with pytest.raises(ssl.SSLError):
        _handshake(target, _legacy_context(version, "ALL")).close()


@pytest.mark.parametrize(
    "ciphers",
    [
        pytest.param(
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256", id="cbc"
        ),
        pytest.param("AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA", id="rsa-key-exchange"),
        pytest.param("DHE-RSA-AES128-GCM-SHA256:DHE-RSA-CHACHA20-POLY1305", id="dhe"),
    ],
)
def test_tls_1_2_offering_only_weak_suites_refused(target, ciphers):
    # The same client with one ECDHE AEAD suite connects: the refusal is the suites, not 1.2.
    good = _legacy_context(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256")
    with _handshake(target, good) as tls:
        assert tls.version() == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        _handshake(target, _legacy_context(ssl.TLSVersion.TLSv1_2, ciphers)).close()


def test_tls_1_3_accepted_and_http2_negotiated(target):
    context = _verifying_context(target["root"], minimum_version=ssl.TLSVersion.TLSv1_3)
    with _handshake(target, context, alpn=["h2", "http/1.1"]) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "h2"
    url = f"https://{target['domain']}/readyz"
    assert _curl(target, "--http2", "-o", "/dev/null", "-w", "%{http_version}", url) == "2"


def test_mozilla_intermediate_profile_per_sslyze(target):
    from sslyze import (
        CertificateInfoExtraArgument,
        ScanCommandsExtraArguments,
        Scanner,
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
    # Raises ServerNotCompliantWithTlsConfiguration naming every deviation.
    check_server_against_tls_configuration(
        result, MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    )
    accepted = result.scan_result.tls_1_2_cipher_suites.result.accepted_cipher_suites
    assert accepted
    assert all("_ECDHE_" in suite.cipher_suite.name for suite in accepted)


# -- HTTP: headers and redirects -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "curl_args", "status"),
    [
        pytest.param("/readyz", (), 200, id="200"),
        pytest.param("/no-such-route", (), 404, id="404"),
        pytest.param(
            "/readyz",
            # Announces a body far over client_max_body_size: nginx answers 413 itself.
            (
                "-H",
                f"Content-Length: {1 << 30}",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "{}",
            ),
            413,
            id="413-from-nginx",
        ),
    ],
)
def test_hsts_and_security_headers_on_every_response(target, path, curl_args, status):
    got, headers = _https_response_headers(target, path, *curl_args)
    assert got == status
    for name, value in SECURITY_HEADERS.items():
        assert name in headers, f"{name} missing on a {status}"
        if value is not None:
            assert headers[name] == value, name


def test_a_permissions_policy_with_quoted_origins_is_sent_as_written(target):
    """An allowlist names origins in double quotes (the header's own syntax), which nginx's
    add_header needs escaped: the value reaches clients as the inventory wrote it."""
    policy = 'geolocation=(self "https://maps.example.org"), camera=()'
    try:
        run = run_deploy("--data", f"tls_permissions_policy={policy}")
        assert run.returncode == 0, run.stderr[-2000:]
        _, headers = _https_response_headers(target, "/healthz")
        assert headers["permissions-policy"] == policy
    finally:
        assert run_deploy().returncode == 0


def test_http_is_a_308_to_https_except_the_acme_path(target, host):
    domain, address = target["domain"], target["address"]
    conn = http.client.HTTPConnection(address, 80, timeout=5)
    conn.request("POST", "/v1/anything?x=1", body=b"{}", headers={"Host": domain})
    response = conn.getresponse()
    assert response.status == 308
    assert response.getheader("Location") == f"https://{domain}/v1/anything?x=1"
    conn.close()

    token = "plinth-tls-test-token"
    challenges = f"{ACME_WEBROOT}/.well-known/acme-challenge"
    host.run_expect([0], f"mkdir -p {challenges} && echo ok-{token} > {challenges}/{token}")
    try:
        conn = http.client.HTTPConnection(address, 80, timeout=5)
        conn.request("GET", f"/.well-known/acme-challenge/{token}", headers={"Host": domain})
        response = conn.getresponse()
        assert (response.status, response.read().strip()) == (200, f"ok-{token}".encode())
    finally:
        host.run(f"rm -f {challenges}/{token}")


# -- renewal ---------------------------------------------------------------------------------


def test_certbot_timer_renews_trusting_the_acme_ca_and_reloads_nginx(host):
    timer = host.service("certbot.timer")
    assert timer.is_enabled and timer.is_running
    environment = host.check_output("systemctl show certbot.service -p Environment")
    assert f"REQUESTS_CA_BUNDLE={HOST_CA_BUNDLE}" in environment
    hook = host.file("/etc/letsencrypt/renewal-hooks/deploy/reload-nginx")
    assert hook.mode == 0o755
    assert "nginx -t" in hook.content_string


def test_forced_renewal_new_serial_same_nginx_master_no_failed_request(target, host):
    before = _served_certificate(target).serial_number
    master = host.file("/run/nginx.pid").content_string.strip()
    context = _verifying_context(target["root"])
    failures: list[str] = []
    done = 0
    stop = threading.Event()

    def requests_during_renewal():
        nonlocal done
        while not stop.is_set():
            try:
                status = _https_get_status(target, context)
                if status != 200:
                    failures.append(f"HTTP {status}")
            except OSError as exc:
                failures.append(repr(exc))
            done += 1

    worker = threading.Thread(target=requests_during_renewal, daemon=True)
    worker.start()
    try:
        host.run_expect(
            [0],
            f"REQUESTS_CA_BUNDLE={HOST_CA_BUNDLE} certbot renew --force-renewal "
            "--cert-name plinth --no-random-sleep-on-renew --non-interactive --quiet",
        )
        deadline = time.monotonic() + 10
        while _served_certificate(target).serial_number == before:
            assert time.monotonic() < deadline, "the renewed certificate is never served"
            time.sleep(0.2)
        time.sleep(0.5)  # a few more requests on the new certificate
    finally:
        stop.set()
        worker.join(10)
    assert host.file("/run/nginx.pid").content_string.strip() == master
    assert done > 10
    assert failures == []


# -- the deploy ------------------------------------------------------------------------------


# Re-deploying with TLS on changes nothing: test_idempotence.py's second deploy covers the
# whole site, TLS included (the rehearsal inventory turns tls_mode acme on).


@pytest.mark.parametrize(
    ("data", "line"),
    [
        pytest.param("tls_acme_email=", "tls_acme_email '' is not a valid e-mail", id="no-email"),
        pytest.param(
            "tls_domains=10.213.0.2", "TLS domain 10.213.0.2 is an IP address", id="ip-in-tls"
        ),
        pytest.param("domain=10.213.0.2", "'10.213.0.2' is not a valid DNS name", id="ip-domain"),
        pytest.param(
            "tls_domains=www.plinth.rehearsal.test",
            "must include domain 'plinth.rehearsal.test'",
            id="domain-not-in-certificate",
        ),
        pytest.param("tls_mode=bogus", "tls_mode 'bogus' is not one of", id="unknown-mode"),
        pytest.param(  # replaced 30 days before expiry: a 30-day one on every deploy
            "tls_mode=self-signed tls_self_signed_days=30",
            "tls_self_signed_days 30 must be a whole number above 30",
            id="self-signed-too-short",
        ),
        pytest.param(
            "tls_acme_directory=http://ca.invalid/dir", "is not an https:// URL", id="http-ca"
        ),
        # Values that land in nginx's files or in paths: each would break one.
        pytest.param(
            "tls_referrer_policy=no-referrer\\", "must be printable ASCII", id="header-backslash"
        ),
        pytest.param(
            "tls_permissions_policy=camera=($host)", "must be printable ASCII", id="header-variable"
        ),
        pytest.param("tls_hsts_max_age=-1", "must be a whole number of seconds", id="hsts-age"),
        pytest.param(
            "tls_hsts_include_subdomains=yes", "must be true or false", id="hsts-subdomains"
        ),
        pytest.param("tls_cert_name=../etc", "must be a plain name", id="cert-name"),
        pytest.param("tls_acme_webroot=var/www", "must be an absolute path", id="webroot"),
        pytest.param(  # the deploy stays green; every renewal (HTTP-01) would fail behind it
            "firewall_tcp_ports=[443]", "renews over HTTP on port 80", id="acme-without-port-80"
        ),
        pytest.param(  # nginx's sandbox (PrivateTmp=) hides it: every renewal would fail
            "tls_acme_webroot=/tmp/acme", "which nginx's sandbox hides", id="webroot-in-tmp"
        ),
        pytest.param("tls_acme_root=/etc/hostname", "is not a PEM certificate", id="root-not-pem"),
    ],
)
def test_bad_tls_data_fails_before_any_change_with_one_line(first_deploy, data, line):
    run = run_deploy(*(arg for item in data.split(" ") for arg in ("--data", item)))
    assert run.returncode != 0
    errors = [text for text in run.stderr.splitlines() if "pyinfra error" in text]
    assert len(errors) == 1 and line in errors[0], run.stderr[-2000:]
    assert "Starting operation" not in run.stderr  # nothing ran on the host


def test_a_name_listed_twice_is_one_name_and_issues_nothing_again(target, host):
    """certbot keeps one of a name given twice: the deploy must too, or the certificate
    never matches the list and is re-issued on every deploy (Let's Encrypt's duplicate
    certificate limit would then fail a deploy within a week)."""
    twice = f"tls_domains={target['domain']},{target['domain'].upper()}."
    cert = "/etc/letsencrypt/live/plinth/cert.pem"
    issued = host.check_output(f"sha256sum {cert}")
    for _ in range(2):
        run = run_deploy("--data", twice)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.totals["success"] == 0, run.stderr[-2000:]
    assert host.check_output(f"sha256sum {cert}") == issued


def _served_names(target) -> list[str]:
    cert = _served_certificate(target)
    names = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    return sorted(names.get_values_for_type(x509.DNSName))


def test_a_new_webroot_reissues_so_that_renewals_use_it(target, host):
    """certbot renews with the webroot it issued with (its renewal configuration): a new
    tls_acme_webroot, which nginx serves from then on, re-issues the certificate so that it
    is recorded there, and a renewal against the ACME server then passes."""
    webroot, conf = "/var/www/plinth-acme-test", "/etc/letsencrypt/renewal/plinth.conf"
    renew = (  # a real renewal (a dry run would ask Let's Encrypt's staging, not this CA)
        f"REQUESTS_CA_BUNDLE={HOST_CA_BUNDLE} certbot renew --force-renewal --cert-name plinth "
        "--no-random-sleep-on-renew --non-interactive"
    )
    try:
        moved = run_deploy("--data", f"tls_acme_webroot={webroot}")
        assert moved.returncode == 0, moved.stderr[-2000:]
        assert f"webroot_path = {webroot}," in host.file(conf).content_string
        renewal = host.run(renew)
        assert renewal.rc == 0, renewal.stdout + renewal.stderr
        again = run_deploy("--data", f"tls_acme_webroot={webroot}")
        assert again.returncode == 0 and again.totals["success"] == 0, again.stderr[-2000:]
    finally:
        assert run_deploy().returncode == 0
        host.run(f"rm -rf {webroot}")
    assert f"webroot_path = {TLS_DEFAULTS['tls_acme_webroot']}," in host.file(conf).content_string


def test_changing_the_domain_list_reissues_and_an_unchanged_one_does_not(target):
    """A second name makes certbot issue a new certificate naming both; the same list again
    changes nothing; back to the one name, the certificate follows."""
    extra = f"www.{target['domain']}"
    both = f"tls_domains={target['domain']},{extra}"
    try:
        assert run_deploy("--data", both).returncode == 0
        assert _served_names(target) == sorted([target["domain"], extra])
        again = run_deploy("--data", both)
        assert again.returncode == 0 and again.totals["success"] == 0
    finally:
        assert run_deploy().returncode == 0
    assert _served_names(target) == [target["domain"]]
