"""TLS: a certificate (ACME through certbot, or self-signed) and nginx's HTTPS server.

Order on a fresh host, so nginx never fails to start: port 80 serves the ACME webroot first
(a snippet the nginx deploy's site includes), certbot obtains the certificate over HTTP-01, and
only then are the HTTPS server and port 80's redirect written, checked with `nginx -t` and
reloaded. The certificate is requested again only when it is missing, expired, no longer names
exactly the configured domains, or came from another ACME directory or root; renewal is Debian's
`certbot.timer`, whose deploy hook runs `nginx -t` and reloads nginx (same master, no restart).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path

from cryptography import x509
from pyinfra import host, logger
from pyinfra.api import FactBase, deploy, operation
from pyinfra.operations import apt, files, systemd

from infra.deploys import layout
from infra.deploys.firewall import FIREWALL_DEFAULTS
from infra.deploys.nginx import validate_and_reload
from infra.deploys.templating import TEMPLATES_DIR, template
from infra.deploys.validate import (
    ABSOLUTE_PATH,
    DNS_NAME,
    EMAIL,
    InventoryDataError,
    hidden_by_sandbox,
)

TLS_MODES = ("acme", "self-signed", "off")
ACME_DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}

TLS_DEFAULTS = {
    # "acme": a certificate from an ACME CA through certbot (HTTP-01 on a webroot).
    # "self-signed": only for a host with no public name (browsers warn; clients must pin it).
    #     Never the production default. "off": HTTP only, no certificate, no HTTPS server.
    "tls_mode": "acme",
    # Names the certificate covers (list, or "a.example,b.example"); None: [domain].
    # Changing the list re-issues the certificate.
    "tls_domains": None,
    # ACME directory URL, or "letsencrypt" / "letsencrypt-staging" (untrusted certificates
    # with generous rate limits: use it while trying a new production host).
    "tls_acme_directory": "letsencrypt",
    # Contact e-mail of the ACME account (expiry and policy notices); required for acme.
    "tls_acme_email": None,
    # Control-machine file: the CA bundle certbot must trust to reach the ACME directory (the
    # rehearsal's pebble listener). Uploaded and set as REQUESTS_CA_BUNDLE for every certbot
    # run, certbot.timer's included. None: the host's trust store (Let's Encrypt).
    "tls_acme_ca_bundle": None,
    # Control-machine file: the root the certificate must chain to; a certificate under
    # another root is re-issued (pebble makes a new root at every start). None: not checked.
    "tls_acme_root": None,
    # certbot's name for the certificate: /etc/letsencrypt/live/<name>/.
    "tls_cert_name": layout.APP_NAME,
    # Directory nginx serves /.well-known/acme-challenge/ from on port 80; certbot writes there.
    "tls_acme_webroot": "/var/www/letsencrypt",
    # Days a self-signed certificate is valid; it is replaced 30 days before it expires.
    "tls_self_signed_days": 365,
    # Strict-Transport-Security on every HTTPS response (Mozilla: two years).
    "tls_hsts_max_age": 63072000,
    "tls_hsts_include_subdomains": True,
    # Security headers on every response, errors included (the API serves JSON, no pages).
    # Printable ASCII without \ or $; origins in double quotes are fine, e.g.
    # 'geolocation=(self "https://maps.example.org")'.
    "tls_referrer_policy": "no-referrer",
    "tls_content_security_policy": "default-src 'none'; frame-ancestors 'none'",
    "tls_permissions_policy": (
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
        "microphone=(), payment=(), usb=()"
    ),
}

# Names on the host that only this deploy and its templates use.
LETSENCRYPT_DIR = "/etc/letsencrypt"
ACME_CA_BUNDLE = f"{LETSENCRYPT_DIR}/{layout.APP_NAME}-acme-ca-bundle.pem"
CERTBOT_DROPIN = f"{layout.SYSTEMD_UNIT_DIR}/certbot.service.d/{layout.APP_NAME}-acme-ca.conf"
DEPLOY_HOOK = f"{LETSENCRYPT_DIR}/renewal-hooks/deploy/reload-nginx"
SELF_SIGNED_DIR = f"/etc/ssl/{layout.APP_NAME}"
SELF_SIGNED_RENEW_DAYS = 30


class TlsCertificate(FactBase):
    """A PEM certificate on the host: {"names", "serial", "valid" (still valid `days` from
    now), "chain_issuer" (issuer of the first certificate in `chain`), "directory" and
    "webroot" (certbot's server and webroot in `renewal_conf`, which its renewals use)}; None
    when there is no certificate."""

    requires_command = "openssl"

    def command(self, cert, chain="", renewal_conf="", days=0):
        c, ch, conf = (shlex.quote(p) for p in (cert, chain, renewal_conf))
        return (
            f"test -r {c} || exit 0; "
            f'echo "names=$(openssl x509 -in {c} -noout -ext subjectAltName | tail -n +2 '
            "| tr -d ' ')\"; "
            f"openssl x509 -in {c} -noout -serial; "
            f"openssl x509 -in {c} -noout -checkend {int(days) * 86400} >/dev/null "
            "&& echo valid=yes || echo valid=no; "
            f'if [ -r {ch} ]; then echo "chain_$(openssl x509 -in {ch} -noout -issuer '
            '-nameopt RFC2253)"; fi; '
            f"if [ -r {conf} ]; then sed -n -e 's/^server *= */directory=/p' "
            # webroot_path = /var/www/letsencrypt,  (certbot writes a list)
            f"-e 's/^webroot_path *= *\\([^,]*\\).*/webroot=\\1/p' {conf}; fi"
        )

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return {
            "names": [n.removeprefix("DNS:") for n in values.get("names", "").split(",") if n],
            "serial": values.get("serial"),
            "valid": values.get("valid") == "yes",
            "chain_issuer": values.get("chain_issuer"),
            "directory": values.get("directory"),
            "webroot": values.get("webroot"),
        }


class NginxVersion(FactBase):
    """The installed nginx's version, e.g. (1, 22, 1); None without nginx."""

    requires_command = "nginx"

    def command(self):
        return "nginx -v 2>&1"

    def process(self, output):
        match = re.search(r"nginx/(\d+(?:\.\d+)*)", " ".join(output))
        return tuple(int(part) for part in match.group(1).split(".")) if match else None


def _fail(message: str) -> None:
    raise InventoryDataError(f"inventory data for {host.name}: {message}")


# A header value as nginx's add_header takes it between double quotes: printable ASCII, no
# backslash and no `$` (nginx would read an escape or a variable). A double quote, which a
# Permissions-Policy origin needs, is escaped by the template. Anything else would make nginx
# refuse the file, or send a header nobody set.
_HEADER_VALUE = re.compile(r'^[ !"#%-\[\]-~]*\Z')
HEADER_KEYS = ("tls_referrer_policy", "tls_content_security_policy", "tls_permissions_policy")
# certbot's certificate name and the webroot land in paths and in nginx's files as they are.
_CERT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def _check_common(data) -> None:
    """The keys every mode uses (the security headers are sent with TLS off too)."""
    for key in HEADER_KEYS:
        value = data.get(key)
        if not isinstance(value, str) or not _HEADER_VALUE.match(value):
            _fail(f"{key} {value!r} must be printable ASCII without \\ or $")
    max_age = data.get("tls_hsts_max_age")
    if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0:
        _fail(f"tls_hsts_max_age {max_age!r} must be a whole number of seconds, 0 or more")
    if not isinstance(data.get("tls_hsts_include_subdomains"), bool):
        value = data.get("tls_hsts_include_subdomains")
        _fail(f"tls_hsts_include_subdomains {value!r} must be true or false")
    if not isinstance(data.get("tls_cert_name"), str) or not _CERT_NAME.match(data.tls_cert_name):
        _fail(f"tls_cert_name {data.get('tls_cert_name')!r} must be a plain name, e.g. plinth")
    webroot = data.get("tls_acme_webroot")
    if not isinstance(webroot, str) or not ABSOLUTE_PATH.match(webroot):
        _fail(
            f"tls_acme_webroot {webroot!r} must be an absolute path without a trailing /, "
            "e.g. /var/www/letsencrypt"
        )
    if hidden := hidden_by_sandbox(webroot):
        # nginx serves the challenges certbot writes there: its sandbox would hide them, and
        # every renewal after the first certificate would fail behind a green deploy.
        _fail(
            f"tls_acme_webroot {webroot!r} is under {hidden}, which nginx's sandbox hides; "
            "choose e.g. /var/www/letsencrypt"
        )


def tls_settings(data) -> dict:
    """The TLS data, checked: any bad value stops the run, before any change, with one line."""
    mode = data.get("tls_mode")
    if mode not in TLS_MODES:
        _fail(f"tls_mode {mode!r} is not one of {', '.join(TLS_MODES)}")
    _check_common(data)
    domains = data.get("tls_domains") or ([data.domain] if data.get("domain") else [])
    if isinstance(domains, str):  # --data tls_domains=a.example,b.example
        domains = domains.replace(",", " ").split()
    # Each name once, in order: certbot keeps one of a name given twice, so a list with a
    # repeat would never match the certificate and re-issue it on every deploy.
    names = dict.fromkeys(str(d).lower().rstrip(".") for d in domains)
    settings = {"mode": mode, "domains": list(names)}
    if mode == "off":
        return settings
    if not settings["domains"]:
        _fail("no domain to put in the certificate (set domain or tls_domains)")
    for name in settings["domains"]:
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            pass
        else:
            _fail(f"TLS domain {name} is an IP address; certificates here name DNS names")
        if not DNS_NAME.match(name):
            _fail(f"TLS domain {name!r} is not a valid DNS name")
    domain = str(data.get("domain") or "").lower().rstrip(".")
    if domain and domain not in settings["domains"]:
        # Releases health-check https://<domain>/ and would fail every cutover on this cert.
        _fail(f"tls_domains {settings['domains']!r} must include domain {domain!r}")
    ports = data.get("firewall_tcp_ports", FIREWALL_DEFAULTS["firewall_tcp_ports"])
    try:  # as the firewall reads them ("443" opens 443); it refuses a bad list itself
        open_ports = {int(port) for port in ports} if isinstance(ports, list | tuple) else None
    except (TypeError, ValueError):
        open_ports = None
    if open_ports is not None and layout.HTTPS_PORT not in open_ports:
        # The release health check goes to 127.0.0.1: the deploy stays green, clients are dropped.
        _fail(
            f"tls_mode {mode} serves HTTPS on port {layout.HTTPS_PORT}: firewall_tcp_ports "
            f"{list(ports)!r} must include it"
        )
    if mode == "self-signed":
        days = data.get("tls_self_signed_days")
        if isinstance(days, bool) or not isinstance(days, int) or days <= SELF_SIGNED_RENEW_DAYS:
            # It is replaced SELF_SIGNED_RENEW_DAYS before it expires: a shorter one, every run.
            _fail(
                f"tls_self_signed_days {days!r} must be a whole number above "
                f"{SELF_SIGNED_RENEW_DAYS} (the certificate is replaced that long before expiry)"
            )
        return settings
    if open_ports is not None and layout.HTTP_PORT not in open_ports:
        # The certificate in hand keeps the deploy green; every renewal would fail behind it.
        _fail(
            f"tls_mode acme renews over HTTP on port {layout.HTTP_PORT}: firewall_tcp_ports "
            f"{list(ports)!r} must include it"
        )
    email = data.get("tls_acme_email")
    if not email or not EMAIL.match(str(email)):
        _fail(f"tls_mode acme needs a contact e-mail in tls_acme_email (got {email!r})")
    directory = data.get("tls_acme_directory")
    directory = ACME_DIRECTORIES.get(directory, directory)
    if not isinstance(directory, str) or not directory.startswith("https://"):
        _fail(f"tls_acme_directory {directory!r} is not an https:// URL or a known name")
    for key in ("tls_acme_ca_bundle", "tls_acme_root"):
        if data.get(key) and not Path(data.get(key)).is_file():
            _fail(f"{key} {data.get(key)} is not a file on this machine")
    root = data.get("tls_acme_root")
    root_subject = None
    if root:
        try:
            root_subject = x509.load_pem_x509_certificate(Path(root).read_bytes())
        except ValueError:
            _fail(f"tls_acme_root {root} is not a PEM certificate")
        root_subject = root_subject.subject.rfc4514_string()
    return {**settings, "email": str(email), "directory": directory, "root_subject": root_subject}


def _reissue_reason(cert, domains, directory, root_subject, webroot) -> str | None:
    if cert is None:
        return "no certificate yet"
    if sorted(cert["names"]) != sorted(domains):
        return f"names changed: {','.join(cert['names'])} -> {','.join(domains)}"
    if not cert["valid"]:
        return "expired"
    if cert["directory"] != directory:
        return f"ACME directory changed: {cert['directory']} -> {directory}"
    if root_subject and cert["chain_issuer"] != root_subject:
        return f"issued under {cert['chain_issuer']}, not the configured {root_subject}"
    if cert["webroot"] and cert["webroot"] != webroot:
        # certbot renews with the webroot it issued with, which nginx no longer serves: every
        # renewal would fail. Debian 12's certbot has no `reconfigure`; a new issue records it.
        return f"webroot changed: {cert['webroot']} -> {webroot} (renewals use the old one)"
    return None


@operation()
def acme_certificate(cert_name, domains, directory, email, webroot, ca_bundle, root_subject):
    """certbot obtains `cert_name` for `domains`, unless a valid matching one is there: a re-run
    never re-issues a good certificate (renewing it is certbot.timer's job)."""
    live = f"{LETSENCRYPT_DIR}/live/{cert_name}"
    cert = host.get_fact(
        TlsCertificate,
        cert=f"{live}/cert.pem",
        chain=f"{live}/chain.pem",
        renewal_conf=f"{LETSENCRYPT_DIR}/renewal/{cert_name}.conf",
    )
    reason = _reissue_reason(cert, domains, directory, root_subject, webroot)
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
    """A self-signed certificate for `domains`, labelled so in its subject; replaced when the
    names change or it expires within 30 days."""
    cert = host.get_fact(TlsCertificate, cert=cert_path, days=SELF_SIGNED_RENEW_DAYS)
    if cert and sorted(cert["names"]) == sorted(domains) and cert["valid"]:
        host.noop(f"self-signed certificate {cert_path} is valid for {', '.join(domains)}")
        return
    sans = "subjectAltName=" + ",".join(f"DNS:{name}" for name in domains)
    subject = f"/O={layout.APP_NAME} SELF-SIGNED, not trusted/CN={domains[0]}"
    crt, key = shlex.quote(cert_path), shlex.quote(key_path)
    yield (
        "umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        f"-days {int(days)} -subj {shlex.quote(subject)} -addext {shlex.quote(sans)} "
        f"-keyout {key}.new -out {crt}.new 2>/dev/null && chmod 644 {crt}.new "
        f"&& mv -f {key}.new {key} && mv -f {crt}.new {crt}"
    )


@operation()
def https_server(cert_path, key_path, **template_data):
    """Nginx's HTTPS server and port 80's redirect to it, written only once the certificate
    exists. The `http2` syntax and session tickets follow the installed nginx, read when the
    operation runs (the nginx deploy has installed it by then)."""
    if host.get_fact(TlsCertificate, cert=cert_path) is None:
        host.noop(f"no certificate at {cert_path}: HTTPS server not enabled")
        return
    version = host.get_fact(NginxVersion) or (1, 22, 0)
    yield from files.template._inner(
        src=str(TEMPLATES_DIR / "nginx/plinth-tls.conf.j2"),
        dest=layout.NGINX_TLS_SITE,
        mode="644",
        user="root",
        group="root",
        **layout.layout_vars(),
        cert_path=cert_path,
        key_path=key_path,
        nginx_version=".".join(map(str, version)),
        http2_directive=version >= (1, 25, 1),  # `listen ... http2` is deprecated from 1.25.1
        session_tickets_off=version < (1, 23, 2),  # older nginx never rotates the ticket key
        **template_data,
    )
    yield from files.link._inner(path=layout.NGINX_TLS_SITE_ENABLED, target=layout.NGINX_TLS_SITE)
    yield from files.template._inner(
        src=str(TEMPLATES_DIR / "nginx/https-redirect.conf.j2"),
        dest=layout.NGINX_HTTP_REDIRECT,
        mode="644",
        user="root",
        group="root",
    )


@deploy("TLS", data_defaults=TLS_DEFAULTS)
def tls() -> None:
    data = host.data
    settings = tls_settings(data)
    mode = settings["mode"]
    changed = [
        template(
            "nginx/security-headers.conf.j2",
            layout.NGINX_SECURITY_HEADERS,
            name="Security headers",
            referrer_policy=data.tls_referrer_policy,
            content_security_policy=data.tls_content_security_policy,
            permissions_policy=data.tls_permissions_policy,
        ),
        template(
            "nginx/http-security-headers.conf.j2",
            layout.NGINX_HTTP_SECURITY_HEADERS,
            name="Security headers on port 80 too",
            security_headers=layout.NGINX_SECURITY_HEADERS,
        ),
    ]
    if mode == "off":
        changed.append(
            files.link(
                name="HTTPS server disabled", path=layout.NGINX_TLS_SITE_ENABLED, present=False
            )
        )
        for path in (layout.NGINX_TLS_SITE, layout.NGINX_HTTP_REDIRECT):
            changed.append(files.file(name=f"{path} removed", path=path, present=False))
        validate_and_reload(changed)
        return

    if mode == "acme":
        cert_path, key_path = _acme_certificate(data, settings, changed)
    else:
        logger.warning(f"{host.print_prefix}TLS: SELF-SIGNED certificate, clients won't trust it")
        files.directory(name="Self-signed certificate directory", path=SELF_SIGNED_DIR, mode="755")
        cert_path, key_path = (
            f"{SELF_SIGNED_DIR}/self-signed.crt",
            f"{SELF_SIGNED_DIR}/self-signed.key",
        )
        changed.append(
            self_signed_certificate(
                name="Self-signed certificate (NOT TRUSTED: for a host with no public name)",
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
            name="HTTPS server; port 80 redirects to it",
            cert_path=cert_path,
            key_path=key_path,
            server_names=settings["domains"],
            hsts=hsts,
            security_headers=layout.NGINX_SECURITY_HEADERS,
            self_signed=mode == "self-signed",
        )
    )
    validate_and_reload(changed)


def _acme_certificate(data, settings, changed) -> tuple[str, str]:
    """certbot, the webroot served on port 80, renewal; returns the (cert, key) paths."""
    apt.packages(name="certbot", packages=["certbot"], no_recommends=True)
    files.directory(name="ACME webroot", path=data.tls_acme_webroot, mode="755")
    changed.append(
        template(
            "nginx/acme-challenge.conf.j2",
            layout.NGINX_HTTP_ACME_CHALLENGE,
            name="Port 80 serves the ACME webroot",
            webroot=data.tls_acme_webroot,
        )
    )
    validate_and_reload(changed)  # the CA looks at the webroot: serve it first
    changed.clear()

    ca_bundle = data.tls_acme_ca_bundle
    if ca_bundle:
        files.put(name="ACME CA bundle", src=ca_bundle, dest=ACME_CA_BUNDLE, mode="644")
        dropin = template(
            "systemd/certbot-acme-ca-bundle.conf.j2",
            CERTBOT_DROPIN,
            name="certbot.service trusts the ACME CA bundle",
            ca_bundle=ACME_CA_BUNDLE,
        )
    else:
        dropin = files.file(
            name="certbot.service: system trust", path=CERTBOT_DROPIN, present=False
        )
    systemd.daemon_reload(name="systemd reloads certbot.service", _if=dropin.did_change)
    template(
        "letsencrypt/renewal-hooks/deploy/reload-nginx.j2",
        DEPLOY_HOOK,
        name="certbot deploy hook: nginx -t, then reload",
        mode="755",
    )
    systemd.service(
        name="certbot.timer renews", service="certbot.timer", running=True, enabled=True
    )
    changed.append(
        acme_certificate(
            name="ACME certificate",
            cert_name=data.tls_cert_name,
            domains=settings["domains"],
            directory=settings["directory"],
            email=settings["email"],
            webroot=data.tls_acme_webroot,
            ca_bundle=ACME_CA_BUNDLE if ca_bundle else None,
            root_subject=settings["root_subject"],
        )
    )
    live = f"{LETSENCRYPT_DIR}/live/{data.tls_cert_name}"
    return f"{live}/fullchain.pem", f"{live}/privkey.pem"
