"""The Vagrant machine (`vagrant up`, see infra/vagrant/README.md): a throwaway VM or LXC
container with no public name, hence a self-signed certificate, clearly labelled as such.
The ACME server the nspawn rehearsal runs (pebble) is not reachable from a VirtualBox,
libvirt or LXC guest; a user who runs one the guest can reach sets tls_mode = "acme" and the
tls_acme_* keys (infra/deploys/tls.py) here instead."""

domain = "plinth.vagrant.test"
tls_mode = "self-signed"
app_environment = "production"  # rehearse exactly what production runs

# Vagrant's login user, with passwordless sudo (the connector sets ssh_user from ssh-config).
ssh_user = "vagrant"
_sudo = True
# ... which is the deploy user here: Vagrant keeps its keys (infra/deploys/access.py leaves an
# existing authorized_keys alone); root and password login go off as on any host.
deploy_user = "vagrant"
# Every `vagrant up` makes new host keys behind a recycled address: never prompt, never
# remember them in ~/.ssh/known_hosts.
ssh_known_hosts_file = "/dev/null"
ssh_strict_host_key_checking = "no"
