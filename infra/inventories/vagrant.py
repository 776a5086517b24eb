"""The Vagrantfile's machines through pyinfra's @vagrant connector (`vagrant up` first).

Run from the repository root, the Vagrantfile's directory: the connector asks `vagrant status`
and `vagrant ssh-config` there. The `vagrant` group carries group_data/vagrant.py."""

vagrant = ["@vagrant"]
app = ["@vagrant"]
db = ["@vagrant"]
