"""TLS: a certificate (ACME through certbot, or self-signed) and nginx's HTTPS server.

Order on a fresh host, so nginx never fails to start: port 80 already serves the ACME webroot
(the nginx deploy includes our snippet), certbot obtains the certificate over HTTP-01, and only
then is the HTTPS server written and nginx reloaded (after `nginx -t`). The certificate is only
requested again when it is missing, expired, no longer covers `tls_domains`, or came from another
CA; renewal is Debian's `certbot.timer`, whose deploy hook validates and reloads nginx.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import DeployError, FactBase, deploy, operation
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"

ACME_DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
TLS_MODES = ("acme", "self-signed", "off")

# Paths on the host (derived from data, never tunables of their own).
LETSENCRYPT_DIR = "/etc/letsencrypt"
ACME_CA_BUNDLE_PATH = f"{LETSENCRYPT_DIR}/plinth-acme-ca-bundle.pem"
CERTBOT_DROPIN = "/etc/systemd/system/certbot.service.d/plinth-acme-ca-bundle.conf"
DEPLOY_HOOK = f"{LETSENCRYPT_DIR}/renewal-hooks/deploy/reload-nginx"
SELF_SIGNED_DIR = "/etc/ssl/plinth"
NGINX_SNIPPETS = "/etc/nginx/snippets"
ACME_CHALLENGE_SNIPPET = f"{NGINX_SNIPPETS}/plinth-http-acme-challenge.conf"
SECURITY_HEADERS_SNIPPET = f"{NGINX_SNIPPETS}/plinth-security-headers.conf"
HTTPS_REDIRECT_SNIPPET = f"{NGINX_SNIPPETS}/plinth-http-redirect-to-https.conf"
# The nginx deploy's proxy locations, shared by its port-80 server and our HTTPS server.
APP_LOCATIONS_SNIPPET = f"{NGINX_SNIPPETS}/plinth-app.conf"
TLS_SITE = "/etc/nginx/sites-available/plinth-tls"
TLS_SITE_ENABLED = "/etc/nginx/sites-enabled/plinth-tls"

TLS_DEFAULTS = {
    # "acme": a certificate from an ACME CA through certbot (HTTP-01 on a webroot).
    # "self-signed": for a host with no public name; clients must be told to trust it. Never
    #   the production default. "off": HTTP only, no certificate, no HTTPS server.
    "tls_mode": "acme",
    # Names the certificate covers; None means [domain]. Changing the list re-issues it.
    "tls_domains": None,
    # ACME directory URL, or "letsencrypt" / "letsencrypt-staging" (untrusted test certificates,
    # generous rate limits: use it while trying a new production host).
    "tls_acme_directory": "letsencrypt",
    # Contact e-mail for the ACME account (expiry and policy notices). Required in acme mode.
    "tls_acme_email": None,
    # Control-machine file: CA bundle certbot trusts to reach the ACME directory (the rehearsal's
    # pebble listener). Uploaded and set as REQUESTS_CA_BUNDLE for every certbot run, the timer's
    # included. None: the system's trust store (Let's Encrypt).
    "tls_acme_ca_bundle": None,
    # Control-machine file: the root the certificate must chain to; a certificate under another
    # root is re-issued (pebble makes a new root on each start). None: not checked.
    "tls_acme_root": None,
    # certbot's lineage name: /etc/letsencrypt/live/<name>/.
    "tls_cert_name": "plinth",
    # Directory nginx serves /.well-known/acme-challenge/ from, on port 80.
    "tls_acme_webroot": "/var/www/letsencrypt",
    # Validity of a self-signed certificate; it is replaced 30 days before it ends.
    "tls_self_signed_days": 365,
    # Strict-Transport-Security on every HTTPS response (Mozilla: two years).
    "tls_hsts_max_age": 63072000,
    "tls_hsts_include_subdomains": True,
    # Security headers on every response, errors included (the API serves JSON, never pages).
    "tls_referrer_policy": "no-referrer",
    "tls_content_security_policy": "default-src 'none'; frame-ancestors 'none'",
    "tls_permissions_policy": (
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
        "microphone=(), payment=(), usb=()"
    ),
}

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)
_SELF_SIGNED_RENEW_DAYS = 30


class TlsCertificate(FactBase):
    """A PEM certificate on the host: its DNS names, serial, whether it is valid `days` from now,
    the issuer of the first certificate in `chain` and certbot's directory for the lineage in
    `renewal_conf`. None when the certificate is absent."""

    requires_command = "openssl"

    def command(self, cert, chain="", renewal_conf="", days=0):
        cert, chain, conf = (shlex.quote(p) for p in (cert, chain, renewal_conf))
        seconds = int(days) * 86400
        return (
            f'c={cert}; test -r "$c" || exit 0; '
            'echo "names=$(openssl x509 -in "$c" -noout -ext subjectAltName | tail -n +2 '
            "| tr -d ' ')\"; "
            'echo "$(openssl x509 -in "$c" -noout -serial)"; '
            f'openssl x509 -in "$c" -noout -checkend {seconds} >/dev/null '
            "&& echo valid=yes || echo valid=no; "
            f'if [ -r {chain} ]; then echo "chain_$(openssl x509 -in {chain} -noout -issuer '
            '-nameopt RFC2253)"; fi; '
            f"if [ -r {conf} ]; then sed -n 's/^server *= */directory=/p' {conf}; fi"
        )

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        names = [n.removeprefix("DNS:") for n in values.get("names", "").split(",") if n]
        return {
            "names": names,
            "serial": values.get("serial"),
            "valid": values.get("valid") == "yes",
            "chain_issuer": values.get("chain_issuer"),
            "directory": values.get("directory"),
        }


class NginxVersion(FactBase):
    """The installed nginx's version as a tuple of ints, e.g. (1, 22, 1); None without nginx."""

    requires_command = "nginx"

    def command(self):
        return "nginx -v 2>&1"

    def process(self, output):
        match = re.search(r"nginx/(\d+(?:\.\d+)*)", " ".join(output))
        return tuple(int(part) for part in match.group(1).split(".")) if match else None


def _fail(message: str) -> None:
    raise DeployError(f"TLS data: {message}")


def tls_settings(data) -> dict:
    """Validated TLS settings from host data; raises DeployError (one line) before any change."""
    mode = data.get("tls_mode")
    if mode not in TLS_MODES:
        _fail(f"tls_mode {mode!r} is not one of {', '.join(TLS_MODES)}")
    domain = data.get("domain")
    domains = data.get("tls_domains") or ([domain] if domain else [])
    if isinstance(domains, str):  # from the command line: --data tls_domains=a.example,b.example
        domains = domains.replace(",", " ").split()
    settings = {"mode": mode, "domains": [str(d).lower().rstrip(".") for d in domains]}
    if mode == "off":
        return settings
    if not settings["domains"]:
        _fail("no domain for the certificate (set domain or tls_domains)")
    for name in settings["domains"]:
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            pass
        else:
            _fail(f"{name} is an IP address; certificates here are for DNS names only")
        if not _HOSTNAME_RE.match(name) or (mode == "acme" and name.startswith("*.")):
            _fail(f"{name!r} is not a valid DNS name for an HTTP-01 certificate")
    if mode == "acme":
        email = data.get("tls_acme_email")
        if not email or not _EMAIL_RE.match(str(email)):
            _fail(f"acme mode needs a contact e-mail in tls_acme_email (got {email!r})")
        directory = data.get("tls_acme_directory")
        directory = ACME_DIRECTORIES.get(directory, directory)
        if not isinstance(directory, str) or not directory.startswith("https://"):
            _fail(f"tls_acme_directory {directory!r} is not an https:// URL")
        for key in ("tls_acme_ca_bundle", "tls_acme_root"):
            path = data.get(key)
            if path and not Path(path).is_file():
                _fail(f"{key} {path} does not exist on this machine")
        settings.update(email=str(email), directory=directory)
    return settings


def _root_subject(pem_path: str | None) -> str | None:
    if not pem_path:
        return None
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(pem_path).read_bytes()).subject.rfc4514_string()


def _reissue_reason(cert, domains, directory, root_subject) -> str | None:
    if cert is None:
        return "no certificate yet"
    if sorted(cert["names"]) != sorted(domains):
        return f"names changed: {','.join(cert['names'])} -> {','.join(domains)}"
    if not cert["valid"]:
        return "certificate expired"
    if cert["directory"] != directory:
        return f"ACME directory changed: {cert['directory']} -> {directory}"
    if root_subject and cert["chain_issuer"] != root_subject:
        return f"chain issued under {cert['chain_issuer']}, not {root_subject}"
    return None


@operation()
def acme_certificate(cert_name, domains, directory, email, webroot, ca_bundle=None, root=None):
    """Obtain the lineage `cert_name` for `domains` with certbot unless a matching valid one
    exists; never touches a certificate that is still good (renewal is certbot.timer's job)."""
    live = f"{LETSENCRYPT_DIR}/live/{cert_name}"
    cert = host.get_fact(
        TlsCertificate,
        cert=f"{live}/cert.pem",
        chain=f"{live}/chain.pem",
        renewal_conf=f"{LETSENCRYPT_DIR}/renewal/{cert_name}.conf",
    )
    reason = _reissue_reason(cert, domains, directory, _root_subject(root))
    if reason is None:
        host.noop(f"certificate {cert_name} is valid for {', '.join(domains)}")
        return
    logger.info(f"{host.print_prefix}certificate {cert_name}: {reason}")
    command = ["certbot", "certonly", "--non-interactive", "--agree-tos", "--no-eff-email"]
    command += ["--email", email, "--server", directory, "--cert-name", cert_name]
    command += ["--webroot", "--webroot-path", webroot]
    for name in domains:
        command += ["--domain", name]
    if cert is not None:
        command.append("--force-renewal")  # replace the lineage: new names, CA or root
    env = f"REQUESTS_CA_BUNDLE={shlex.quote(ca_bundle)} " if ca_bundle else ""
    yield env + shlex.join(command)


@operation()
def self_signed_certificate(cert_path, key_path, domains, days):
    """A self-signed certificate for `domains`, labelled as such in its subject; replaced when
    the names change or it ends within 30 days."""
    cert = host.get_fact(TlsCertificate, cert=cert_path, days=_SELF_SIGNED_RENEW_DAYS)
    if cert and sorted(cert["names"]) == sorted(domains) and cert["valid"]:
        host.noop(f"self-signed certificate {cert_path} is valid for {', '.join(domains)}")
        return
    sans = ",".join(f"DNS:{name}" for name in domains)
    subject = f"/O=plinth SELF-SIGNED not trusted/CN={domains[0]}"
    yield (
        f"umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
        f"-nodes -days {int(days)} -subj {shlex.quote(subject)} "
        f"-addext {shlex.quote('subjectAltName=' + sans)} "
        f"-keyout {shlex.quote(key_path)}.new -out {shlex.quote(cert_path)}.new 2>/dev/null "
        f"&& chmod 644 {shlex.quote(cert_path)}.new "
        f"&& mv {shlex.quote(key_path)}.new {shlex.quote(key_path)} "
        f"&& mv {shlex.quote(cert_path)}.new {shlex.quote(cert_path)}"
    )


@operation()
def https_server(cert_path, key_path, **template_data):
    """Nginx's HTTPS server, and port 80's redirect to it, written only once the certificate
    exists. `http2` syntax and session tickets follow the installed nginx, read when the
    operation runs (after the nginx deploy installed it)."""
    if host.get_fact(TlsCertificate, cert=cert_path) is None:
        host.noop(f"no certificate at {cert_path} yet: HTTPS server not enabled")
        return
    version = host.get_fact(NginxVersion) or (1, 22, 0)
    yield from files.template._inner(
        src=str(TEMPLATES / "nginx/plinth-tls.conf.j2"),
        dest=TLS_SITE,
        mode="644",
        cert_path=cert_path,
        key_path=key_path,
        http2_directive=version >= (1, 25, 1),
        session_tickets_off=version < (1, 23, 2),
        nginx_version=".".join(map(str, version)),
        **template_data,
    )
    yield from files.link._inner(path=TLS_SITE_ENABLED, target=TLS_SITE)
    yield from files.template._inner(
        src=str(TEMPLATES / "nginx/https-redirect.conf.j2"),
        dest=HTTPS_REDIRECT_SNIPPET,
        mode="644",
    )


@deploy("TLS", data_defaults=TLS_DEFAULTS)
def tls() -> None:
    data = host.data
    settings = tls_settings(data)
    mode = settings["mode"]
    if mode == "self-signed":
        logger.warning(
            f"{host.print_prefix}TLS: SELF-SIGNED certificate, clients will not trust it"
        )

    headers = files.template(
        name="Security headers snippet",
        src=str(TEMPLATES / "nginx/security-headers.conf.j2"),
        dest=SECURITY_HEADERS_SNIPPET,
        mode="644",
        referrer_policy=data.tls_referrer_policy,
        content_security_policy=data.tls_content_security_policy,
        permissions_policy=data.tls_permissions_policy,
    )
    changed = [headers]

    if mode == "off":
        changed.append(
            files.link(name="Disable HTTPS server", path=TLS_SITE_ENABLED, present=False)
        )
        for path in (TLS_SITE, HTTPS_REDIRECT_SNIPPET):
            changed.append(files.file(name=f"Remove {path}", path=path, present=False))
        _validate_and_reload_nginx(changed)
        return

    if mode == "acme":
        cert_path, key_path = _acme(data, settings, changed)
    else:
        files.directory(name="Self-signed TLS directory", path=SELF_SIGNED_DIR, mode="755")
        cert_path = f"{SELF_SIGNED_DIR}/self-signed.crt"
        key_path = f"{SELF_SIGNED_DIR}/self-signed.key"
        changed.append(
            self_signed_certificate(
                name="Self-signed certificate (NOT TRUSTED: no public name)",
                cert_path=cert_path,
                key_path=key_path,
                domains=settings["domains"],
                days=data.tls_self_signed_days,
            )
        )

    hsts = f"max-age={int(data.tls_hsts_max_age)}"
    if data.tls_hsts_include_subdomains:
        hsts += "; includeSubDomains"
    changed.append(
        https_server(
            name="HTTPS server, port 80 redirects to it",
            cert_path=cert_path,
            key_path=key_path,
            server_names=settings["domains"],
            hsts=hsts,
            security_headers_snippet=SECURITY_HEADERS_SNIPPET,
            app_locations_snippet=APP_LOCATIONS_SNIPPET,
            self_signed=mode == "self-signed",
        )
    )
    _validate_and_reload_nginx(changed)


def _acme(data, settings, changed) -> tuple[str, str]:
    apt.packages(name="Install certbot", packages=["certbot"])
    files.directory(
        name="ACME webroot", path=data.tls_acme_webroot, mode="755", user="root", group="root"
    )
    changed.append(
        files.template(
            name="Port 80 serves the ACME webroot",
            src=str(TEMPLATES / "nginx/acme-challenge.conf.j2"),
            dest=ACME_CHALLENGE_SNIPPET,
            mode="644",
            webroot=data.tls_acme_webroot,
        )
    )
    # Serve the webroot before asking the CA to look at it.
    _validate_and_reload_nginx(changed)
    changed.clear()

    ca_bundle = data.tls_acme_ca_bundle
    if ca_bundle:
        files.put(name="ACME CA bundle", src=ca_bundle, dest=ACME_CA_BUNDLE_PATH, mode="644")
    dropin = (
        files.template(
            name="certbot.service trusts the ACME CA bundle",
            src=str(TEMPLATES / "systemd/certbot-acme-ca-bundle.conf.j2"),
            dest=CERTBOT_DROPIN,
            mode="644",
            ca_bundle=ACME_CA_BUNDLE_PATH,
        )
        if ca_bundle
        else files.file(name="No certbot CA drop-in", path=CERTBOT_DROPIN, present=False)
    )
    systemd.daemon_reload(name="Reload systemd units", _if=dropin.did_change)
    files.template(
        name="certbot deploy hook: nginx -t, then reload",
        src=str(TEMPLATES / "letsencrypt/renewal-hooks/deploy/reload-nginx.j2"),
        dest=DEPLOY_HOOK,
        mode="755",
    )
    systemd.service(
        name="certbot.timer renews", service="certbot.timer", running=True, enabled=True
    )

    cert = acme_certificate(
        name="ACME certificate",
        cert_name=data.tls_cert_name,
        domains=settings["domains"],
        directory=settings["directory"],
        email=settings["email"],
        webroot=data.tls_acme_webroot,
        ca_bundle=ACME_CA_BUNDLE_PATH if ca_bundle else None,
        root=data.tls_acme_root,
    )
    changed.append(cert)
    live = f"{LETSENCRYPT_DIR}/live/{data.tls_cert_name}"
    return f"{live}/fullchain.pem", f"{live}/privkey.pem"


def _validate_and_reload_nginx(changed) -> None:
    server.shell(name="nginx -t", commands=["nginx -t -q"], _if=any_changed(*changed))
    systemd.service(name="Reload nginx", service="nginx", reloaded=True, _if=any_changed(*changed))
