"""The rehearsal host: a throwaway Debian machine booted with systemd-nspawn on this machine.

`python -m infra.rehearsal up|down|status|info` (see cli.py). The contract with the deploys and
tests is in docs/contracts.md: after `up`, `.rehearsal/ssh_config` and `.rehearsal/host.json`.
"""
