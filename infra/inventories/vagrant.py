"""The Vagrantfile's machine (`vagrant up` first). The `vagrant` group carries
group_data/vagrant.py.

Inside `vagrant up` (the Vagrantfile's deploy trigger) the machine's SSH details come in
PLINTH_VAGRANT_SSH, from Vagrant itself: a `vagrant status` started while that `up` still runs
can fail on Vagrant's locks. Otherwise (`make vagrant-deploy`) pyinfra's @vagrant connector
asks `vagrant status` and `vagrant ssh-config`, from the repository root, the Vagrantfile's
directory."""

import json
import os

_from_up = json.loads(os.environ.get("PLINTH_VAGRANT_SSH") or "null")
if _from_up and _from_up.get("host") and _from_up.get("key"):
    vagrant = [
        (
            "plinth",
            {
                "ssh_hostname": _from_up["host"],
                "ssh_port": int(_from_up["port"]),
                "ssh_key": _from_up["key"],
            },
        )
    ]
    app = db = ["plinth"]
else:
    vagrant = app = db = ["@vagrant"]
