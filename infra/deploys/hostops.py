"""Small facts and operations the stock ones do not cover. None of them ever puts a secret on
a command line: secrets are read from files on the host by the commands themselves."""

from __future__ import annotations

import hashlib
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, operation
from pyinfra.facts.files import File, Sha1File
from pyinfra.operations.util import any_changed

from infra.deploys import layout


def sha1_of(text: str) -> str:
    """The hex SHA-1 of `text`, as sha1sum and pyinfra's Sha1File print a file's."""
    return hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 (a checksum, not a secret)


class HostPython(FactBase):
    """The host's python3: {"python": "3.11", "glibc": "2.36", "machine": "x86_64"}."""

    def command(self):
        return (
            "command -v python3 >/dev/null && python3 -c 'import platform, sys; "
            'print("%d.%d" % sys.version_info[:2], platform.libc_ver()[1], platform.machine())'
            "' || true"
        )

    def process(self, output):
        parts = " ".join(output).split()
        if len(parts) != 3:
            return None
        return {"python": parts[0], "glibc": parts[1], "machine": parts[2]}


class PathsFresh(FactBase):
    """True when `target` and every one of `sources` exist and no source is newer."""

    def command(self, target, sources):
        checks = " && ".join(
            f"[ -f {shlex.quote(s)} ] && [ ! {shlex.quote(s)} -nt {shlex.quote(target)} ]"
            for s in sources
        )
        return f"if [ -f {shlex.quote(target)} ] && {checks}; then echo yes; else echo no; fi"

    def process(self, output):
        return output == ["yes"]


class PasswordAccepted(FactBase):
    """True when PostgreSQL accepts `role` with the password stored in `password_file`
    (PGPASSWORD is in psql's environment, never in its arguments)."""

    def command(self, password_file, role, database, db_host, db_port):
        f, r, d, h = (shlex.quote(str(v)) for v in (password_file, role, database, db_host))
        return (
            f'if [ -r {f} ] && command -v psql >/dev/null && PGPASSWORD="$(cat {f})" '
            f"PGCONNECT_TIMEOUT=3 psql -w -X -q -h {h} -p {int(db_port)} -U {r} -d {d} "
            "-tAc 'select 1' >/dev/null 2>&1; then echo yes; else echo no; fi"
        )

    def process(self, output):
        return output == ["yes"]


@operation()
def secret_file(path: str, nbytes: int = 32):
    """A random secret generated on the host (hex from /dev/urandom), written once."""
    if host.get_fact(File, path=path):
        host.noop(f"{path} exists")
        return
    p = shlex.quote(path)
    yield (
        f"umask 077 && head -c {int(nbytes)} /dev/urandom | od -An -v -tx1 | tr -d ' \\n' "
        f"> {p}.tmp && mv -f {p}.tmp {p}"
    )


@operation(is_idempotent=False)
def role_password(role: str, password_file: str):
    """ALTER ROLE ... PASSWORD from `password_file`, piped to psql on stdin (printf is a shell
    builtin, so no process shows it) with statement logging off for this session."""
    f = shlex.quote(password_file)
    sql_role = '"' + role.replace('"', '""') + '"'
    yield (
        "{ printf \"SET log_statement = 'none'; SET log_min_error_statement = 'panic'; "
        'SET log_min_duration_statement = -1;\\n"; '
        f'printf "ALTER ROLE %s PASSWORD \'%s\';\\n" {shlex.quote(sql_role)} "$(cat {f})"; }} '
        "| runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres >/dev/null"
    )


@operation(is_idempotent=False)
def render_with_secret(
    source: str,
    secret_file: str,
    dest: str,
    placeholder: str,
    group: str,
    check: str = "",
    previous: str = "",
    served_record: str = "",
):
    """`dest` = `source` with `placeholder` replaced by the secret, 0640 root:`group`, written
    atomically by python3 on the host (the secret never leaves the host). `check`, a shell
    command, is run first on the candidate file (its path in $CANDIDATE): when it fails, the
    candidate is removed, `dest` stays as it was and the operation fails with its output.
    `previous`: where the file being replaced is kept (0640 root:root), for a rollback to go
    back to; but not a `dest` that never served, by `served_record` (the checksum recorded
    when it last did): a run that stopped before its file served leaves the one before it."""
    script = (
        "import grp, hashlib, os, shutil, subprocess, sys\n"
        "src, secret, dest, mark, group, check, previous, record = sys.argv[1:]\n"
        "text = open(src).read().replace(mark, open(secret).read().strip())\n"
        "tmp = dest + '.tmp'\n"
        "fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
        "os.write(fd, text.encode()); os.fsync(fd); os.close(fd)\n"
        "os.chown(tmp, 0, grp.getgrnam(group).gr_gid); os.chmod(tmp, 0o640)\n"
        "env = {**os.environ, 'CANDIDATE': tmp}\n"
        "if check and subprocess.run(check, shell=True, env=env).returncode:\n"
        "    os.unlink(tmp); sys.exit(f'{dest} left as it was: the new one fails its check')\n"
        "served = open(record).read().strip() if record and os.path.exists(record) else None\n"
        "if previous and os.path.exists(dest) and (served is None or not os.path.exists(previous)"
        " or served == hashlib.sha1(open(dest, 'rb').read()).hexdigest()):\n"
        "    shutil.copy2(dest, previous)\n"
        "os.replace(tmp, dest)\n"
    )
    args = (source, secret_file, dest, placeholder, group, check, previous, served_record)
    yield f"python3 -c {shlex.quote(script)} {' '.join(shlex.quote(a) for a in args)}"


def config_directory():
    """/etc/plinth (750 root:plinth): the postgres deploy keeps the password there and the
    app deploy the env file; whichever runs on a host first makes it."""
    from pyinfra.operations import files

    from infra.deploys import layout

    files.directory(
        name="Config directory",
        path=layout.CONFIG_DIR,
        mode="750",
        user="root",
        group=layout.SERVICE_GROUP,
    )


def host_roles() -> set[str]:
    """The host's roles (inventory groups `app`, `db`); a host in neither holds both."""
    return ({"app", "db"} & set(host.groups)) or {"app", "db"}


class NewestFirst(FactBase):
    """Entries of `directory` matching `pattern`, newest first (by mtime). With `marker`, those
    holding that file come first, newest first by the marker's last change (for a release's
    live marker: the last time it went live), then the others, newest first."""

    def command(self, directory, pattern="*", marker=None):
        # One line per entry, in `ls -t` order: 1 and the marker's ctime, or 0 and 0; the name.
        if marker:
            m = shlex.quote(marker)
            rank = f'[ -e "$e/{m}" ] && echo "1 $(stat -c %Z "$e/{m}") $e" || echo "0 0 $e"'
        else:
            rank = 'echo "0 0 $e"'
        return (
            f"cd {shlex.quote(directory)} 2>/dev/null && "
            f"ls -1dt -- {pattern} 2>/dev/null | while read -r e; do {rank}; done || true"
        )

    def process(self, output):
        entries = [line.split(" ", 2) for line in output if line.strip()]
        # sorted() is stable: entries of the same rank keep `ls -t`'s newest-first order.
        ranked = sorted(entries, key=lambda e: (e[0] != "1", -int(e[1])))
        return [name.rstrip("/") for _, _, name in ranked]


@operation()
def pruned(directory: str, pattern: str, keep: int, protect: list[str], prefer: str | None = None):
    """Keep `keep` entries of `directory`: every one in `protect`, then the newest of the others
    (with `prefer`, a file name: those holding it first, see NewestFirst); remove the rest. So
    releases that went live are kept over ones that never did, and failed deploys, however
    many, never push the releases a rollback can go to off the host."""
    entries = host.get_fact(NewestFirst, directory=directory, pattern=pattern, marker=prefer)
    protected = [e for e in entries if f"{directory}/{e}" in protect or e in protect]
    others = [e for e in entries if e not in protected]
    stale = others[max(0, keep - len(protected)) :]
    if not stale:
        host.noop(f"{directory}: {len(entries)} kept")
        return
    yield "rm -rf -- " + " ".join(shlex.quote(f"{directory}/{entry}") for entry in stale)


class AppliedChecksum(FactBase):
    """The checksum recorded (`applied`) when `key`'s configuration was last put into effect,
    or None."""

    def command(self, key):
        return f"cat {shlex.quote(f'{layout.APPLIED_DIR}/{key}')} 2>/dev/null || true"

    def process(self, output):
        return output[0].strip() if output and output[0].strip() else None


def reload_pending(key: str, content: str) -> bool:
    """Whether `content` (a configuration file's) is not known to be in effect: a run that
    wrote it but stopped before the reload leaves it so, and the file alone says nothing (it
    is up to date on the next run). Condition a reload on it besides the file's own change."""
    return host.get_fact(AppliedChecksum, key=key) != sha1_of(content)


class UnitsNotLoaded(FactBase):
    """Of `units`, those whose file changed since systemd last loaded it (NeedDaemonReload):
    written by a run that stopped before its daemon-reload, the file is up to date from then
    on and only systemd still knows."""

    def command(self, units):
        names = " ".join(shlex.quote(unit) for unit in units)
        return (
            f"for u in {names}; do "
            'echo "$u $(systemctl show -p NeedDaemonReload --value "$u" 2>/dev/null)"; done'
        )

    def process(self, output):
        return [line.split()[0] for line in output if line.split()[1:] == ["yes"]]


def units_to_reload(units: list[str], *written):
    """An `_if` for a daemon-reload: one of `written` (the unit files' operations) changed,
    or systemd has not loaded one of `units` since its file last changed (UnitsNotLoaded)."""
    changed = any_changed(*written)
    not_loaded = host.get_fact(UnitsNotLoaded, units=units)
    return lambda: bool(not_loaded) or changed()


@operation()
def applied(key: str, content: str):
    """Records that `content` is in effect for `key` (run it right after the reload)."""
    checksum = sha1_of(content)
    if host.get_fact(AppliedChecksum, key=key) == checksum:
        host.noop(f"{key}: in effect")
        return
    d, f = shlex.quote(layout.APPLIED_DIR), shlex.quote(f"{layout.APPLIED_DIR}/{key}")
    yield f"install -d -m 755 {d} && echo {checksum} > {f}"


def apply_conditions(key: str, path: str, written):
    """`_if`s for the operation that puts `written` (the operation writing `path`) into effect
    (a restart, a reload), and for `applied_file` after it. Besides a change in this run, the
    file on disk may differ from the record of what was last put into effect: a run that
    stopped between writing it and applying it leaves it so, up to date from then on. No
    record is such a difference too: a first deploy that stopped there had recorded nothing
    yet (a host deployed before records has it applied once more)."""
    record = host.get_fact(AppliedChecksum, key=key)
    on_disk = host.get_fact(Sha1File, path=path)
    pending = on_disk is not None and record != on_disk

    def apply() -> bool:
        return pending or written.did_change()

    def record_now() -> bool:
        return apply()

    return apply, record_now


@operation()
def recorded(key: str, checksum: str):
    """Records what is in effect for `key` (AppliedChecksum reads it): the output of the
    shell command `checksum`, run on the host (the files may hold a secret, which never
    travels back). Run it right after the operation that put them into effect."""
    d, f = shlex.quote(layout.APPLIED_DIR), shlex.quote(f"{layout.APPLIED_DIR}/{key}")
    yield f"install -d -m 755 {d} && ({checksum}) > {f}"


@operation()
def applied_file(key: str, path: str):
    """`recorded` for one file: its checksum as the Sha1File fact gives it."""
    yield from recorded._inner(key=key, checksum=f"sha1sum {shlex.quote(path)} | cut -d ' ' -f 1")


@operation()
def validated_file(path: str, content: str, check: str, mode: str = "644"):
    """`path` (root-owned, `mode`) holds `content`, but only once `check` accepted it: the
    candidate is uploaded beside it (`{path}` in `check` names it) and moved into place only
    if the check passes, else removed; a rejected file never takes effect."""
    info = host.get_fact(File, path=path)
    if (
        info
        and (info["user"], info["group"], info["mode"]) == ("root", "root", int(mode))
        and host.get_fact(Sha1File, path=path) == sha1_of(content)
    ):
        host.noop(f"{path} is up to date")
        return
    candidate = f"{path}.candidate"  # sudo skips names with a dot, sshd reads only *.conf
    temp_dir = (host.current_op_global_arguments or {}).get("_temp_dir")  # as files.put
    yield FileUploadCommand(
        StringIO(content),
        candidate,
        remote_temp_filename=host.get_temp_filename(candidate, temp_directory=temp_dir),
    )
    c, p = shlex.quote(candidate), shlex.quote(path)
    yield (
        f"chown root:root {c} && chmod {mode} {c} && {{ {check.replace('{path}', c)} ; }} "
        f"&& mv -f {c} {p} || {{ rm -f {c}; exit 1; }}"
    )
