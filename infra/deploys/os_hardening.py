"""OS hardening: login and password policy, legal banners, no core dumps, unused kernel modules
blocked, kernel and network sysctls, a few audit and hygiene packages, and Lynis with a profile
that names each test skipped on this host and why (docs/operations.md, "Lynis")."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command, Sysctl
from pyinfra.operations import apt, files, server

from infra.deploys import layout
from infra.deploys.templating import template

HARDENING_DEFAULTS = {
    # Audit and hygiene packages on every host: lynis (the audit; Debian's package also runs it
    # daily through lynis.timer), debsums (verify installed files against the packages),
    # libpam-tmpdir (a private $TMPDIR per login), libpam-passwdqc (password strength checks).
    # Not needrestart: it needs binutils, an assembler and linker a server should not carry.
    "hardening_packages": ["lynis", "debsums", "libpam-tmpdir", "libpam-passwdqc"],
    # umask for logins and for the home directories useradd makes (login.defs UMASK). Debian's
    # 022: Debian 13's pam_umask applies it to the deploy's own SSH session too, and with 027 a
    # release the deploy installs is unreadable to the service's users. 027 once deploys set
    # their own umask.
    "login_umask": "022",
    # Password ageing for accounts created from now on (login.defs; nobody logs in by password).
    "password_max_days": 365,
    "password_min_days": 1,
    # An idle interactive shell exits after this many seconds (TMOUT, read-only).
    "shell_idle_timeout_seconds": 900,
    # Kernel modules that may never load: rarely used network protocols with a history of
    # remotely reachable bugs, and removable storage a server has no use for.
    "blocked_kernel_modules": ["dccp", "sctp", "rds", "tipc", "usb-storage", "firewire-core"],
}

# Rounds of SHA-512 for passwords chpasswd and newusers hash (login.defs; PAM uses yescrypt).
SHA_CRYPT_ROUNDS = 65536

LOGIN_DEFS = "/etc/login.defs"
SHELL_PROFILE = "/etc/profile"
ISSUE_FILES = ("/etc/issue", "/etc/issue.net")
COREDUMP_LIMITS = f"/etc/security/limits.d/60-{layout.APP_NAME}-no-coredumps.conf"
COREDUMP_DROPIN = f"/etc/systemd/coredump.conf.d/60-{layout.APP_NAME}.conf"
MODPROBE_BLOCKLIST = f"/etc/modprobe.d/60-{layout.APP_NAME}-blocklist.conf"
SYSCTL_FILE = f"/etc/sysctl.d/60-{layout.APP_NAME}-hardening.conf"
LYNIS_PROFILE = "/etc/lynis/custom.prf"

# Per network namespace: a container sets these for itself too. forwarding comes first:
# writing it resets all.accept_redirects, which the lines after it set again.
NETWORK_SYSCTLS = {
    "net.ipv4.conf.all.forwarding": 0,
    "net.ipv4.conf.all.accept_redirects": 0,
    "net.ipv4.conf.default.accept_redirects": 0,
    "net.ipv6.conf.all.accept_redirects": 0,
    "net.ipv6.conf.default.accept_redirects": 0,
    "net.ipv4.conf.all.send_redirects": 0,
    "net.ipv4.conf.default.send_redirects": 0,
    "net.ipv4.conf.all.accept_source_route": 0,
    "net.ipv4.conf.default.accept_source_route": 0,
    "net.ipv6.conf.all.accept_source_route": 0,
    "net.ipv6.conf.default.accept_source_route": 0,
    "net.ipv4.conf.all.rp_filter": 1,
    "net.ipv4.conf.all.log_martians": 1,
    "net.ipv4.conf.default.log_martians": 1,
    "net.ipv4.icmp_echo_ignore_broadcasts": 1,
    "net.ipv4.icmp_ignore_bogus_error_responses": 1,
    "net.ipv4.tcp_syncookies": 1,
}
# Machine-wide: they belong to the kernel, which a container shares with its machine.
KERNEL_SYSCTLS = {
    "dev.tty.ldisc_autoload": 0,
    "fs.protected_fifos": 2,
    "fs.protected_hardlinks": 1,
    "fs.protected_regular": 2,
    "fs.protected_symlinks": 1,
    "fs.suid_dumpable": 0,
    "kernel.core_uses_pid": 1,
    "kernel.ctrl-alt-del": 0,
    "kernel.dmesg_restrict": 1,
    "kernel.kptr_restrict": 2,
    "kernel.perf_event_paranoid": 3,
    "kernel.randomize_va_space": 2,
    "kernel.sysrq": 0,
    "kernel.unprivileged_bpf_disabled": 1,
    "kernel.yama.ptrace_scope": 1,
    "net.core.bpf_jit_harden": 2,
}
# Lynis expects it too, but it would stop nftables loading its modules after boot: not set.
KERNEL_SYSCTLS_NOT_SET = ("kernel.modules_disabled",)


def in_container() -> bool:
    """True on a container (systemd-nspawn, LXC, ...): it shares its machine's kernel."""
    virt = host.get_fact(Command, "systemd-detect-virt --container || true")
    return (virt or "none").strip() != "none"


@deploy("OS hardening", data_defaults=HARDENING_DEFAULTS)
def os_hardening() -> None:
    data = host.data
    container = in_container()

    apt.packages(
        name="Audit and hygiene packages",
        packages=list(data.hardening_packages),
        no_recommends=True,
    )

    login_defs = {
        "UMASK": data.login_umask,
        "PASS_MAX_DAYS": data.password_max_days,
        "PASS_MIN_DAYS": data.password_min_days,
        "SHA_CRYPT_MIN_ROUNDS": SHA_CRYPT_ROUNDS,
        "SHA_CRYPT_MAX_ROUNDS": SHA_CRYPT_ROUNDS,
    }
    for key, value in login_defs.items():
        files.line(
            name=f"login.defs: {key} {value}",
            path=LOGIN_DEFS,
            line=rf"^{key}\s",
            replace=f"{key} {value}",
        )
    timeout = int(data.shell_idle_timeout_seconds)
    files.block(
        name=f"Login shells: no core dumps, idle timeout {timeout} s",
        path=SHELL_PROFILE,
        marker=f"# {{mark}} {layout.APP_NAME.upper()} OS HARDENING",
        content=f"ulimit -c 0\nTMOUT={timeout}\nreadonly TMOUT\nexport TMOUT",
    )

    for path in ISSUE_FILES:
        template("hardening/issue.j2", path, name=f"Legal banner {path}")
    template(
        "hardening/no-coredumps-limits.conf.j2", COREDUMP_LIMITS, name="No core dumps (limits)"
    )
    template("hardening/coredump.conf.j2", COREDUMP_DROPIN, name="No core dumps (systemd)")
    template(
        "hardening/modprobe-blocklist.conf.j2",
        MODPROBE_BLOCKLIST,
        name="Unused kernel modules never load",
        modules=list(data.blocked_kernel_modules),
    )

    template(
        "hardening/sysctl.conf.j2",
        SYSCTL_FILE,
        name="sysctl: network and kernel hardening",
        network=NETWORK_SYSCTLS,
        kernel=KERNEL_SYSCTLS,
    )
    _apply_sysctls(container)

    template(
        "hardening/lynis-custom.prf.j2",
        LYNIS_PROFILE,
        name="Lynis profile (skipped tests, with reasons)",
        LYNIS_PROFILE=LYNIS_PROFILE,
        container=container,
        machine_sysctls=[*KERNEL_SYSCTLS, *KERNEL_SYSCTLS_NOT_SET],
    )


def _apply_sysctls(container: bool) -> None:
    """Set the live values that differ from the file: systemd-sysctl loads the file at boot on
    a VM, but skips a container (its /proc/sys is read-only there; only net.* is its own)."""
    wanted = dict(NETWORK_SYSCTLS) if container else {**NETWORK_SYSCTLS, **KERNEL_SYSCTLS}
    live = host.get_fact(Sysctl, keys=list(wanted))  # keys this kernel lacks are left out
    if all(live.get(key, value) == value for key, value in wanted.items()):
        return
    # All of them, in the file's order: one write can reset another (see NETWORK_SYSCTLS).
    values = " ".join(f"{key}={value}" for key, value in wanted.items() if key in live)
    server.shell(name="sysctl: set the live values", commands=[f"sysctl -q -w {values}"])
