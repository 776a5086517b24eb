"""Policy for every host. Each deploy documents its keys and defaults in its data_defaults;
set here only what differs from those defaults everywhere."""

# The login (ssh_user, _sudo) is the inventory's: the deploy user once a first deploy made it,
# root before (infra/deploys/login.py; infra/deploys/access.py sets the deploy user up).
# A login user uploads a file, sudo copies it into place. pyinfra would stage it in the TMPDIR
# sudo's root gets, which libpam-tmpdir (os_hardening.py) makes private to root: stage in
# /tmp, as on a stock host (nothing secret is uploaded; secrets are made on the host).
_temp_dir = "/tmp"  # noqa: S108 (see above)

# --- hardening and operations (issue 6; docs/operations.md) -------------------------------------
# Firewall (infra/deploys/firewall.py): firewall_tcp_ports (80 and 443) and sshd's own ports
# are open to everyone; all else inbound is dropped.
# Backups (infra/deploys/backups.py): nightly pg_dump -Fc, kept this many days.
backup_dir = "/var/backups/plinth"
backup_retention_days = 14
backup_on_calendar = "*-*-* 02:30:00"
# nginx (infra/deploys/nginx.py): prediction rate limit per client address, and its burst.
nginx_predict_rate = "20r/s"
nginx_predict_burst = 40
# nginx: seconds a slow client gets for its headers, between body reads, and between reads.
nginx_client_header_timeout = 10
nginx_client_body_timeout = 10
nginx_send_timeout = 10
# nginx logs (infra/deploys/logcaps.py): rotated past this size (hourly check), copies kept.
nginx_log_max_size = "100M"
nginx_log_rotate = 14
# --- end hardening and operations ---------------------------------------------------------------
