# plinth's tasks. Every target assumes ./scripts/bootstrap.sh has run (the README's commands do).
UV      ?= .cache/tools/bin/uv
RUN     := $(UV) run --frozen
PYINFRA := $(RUN) pyinfra -y
RELEASE ?= bookworm

.PHONY: help rehearse rehearse-down deploy-rehearsal release-rehearsal rollback restore ssh logs \
        deploy-production release-production rollback-production \
        deploy-production-dry data-keys dev lint format test test-service test-infra test-infra-bookworm \
        test-infra-trixie test-infra-split test-rehearsal-tool bench

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-24s %s\n", $$1, $$2}'

rehearse:  ## boot (or reuse) the local rehearsal host, deploy plinth to it, print how to reach it
	$(RUN) python -m infra.rehearsal up --release $(RELEASE)
	$(MAKE) --no-print-directory deploy-rehearsal
	@$(RUN) python -m infra.rehearsal info

deploy-rehearsal:  ## re-deploy to the running rehearsal host
	$(PYINFRA) infra/inventories/rehearsal.py infra/deploys/site.py

release-rehearsal:  ## app-only release to the rehearsal host (the app deploy alone; see docs/releases.md)
	$(PYINFRA) infra/inventories/rehearsal.py infra/deploys/release.py

restore:  ## restore a database dump (PLINTH_RESTORE_DUMP=file, default the newest; INVENTORY=...)
	$(PYINFRA) $(or $(INVENTORY),infra/inventories/rehearsal.py) infra/deploys/restore.py

rehearse-down:  ## stop the rehearsal host and remove everything it made on this machine
	$(RUN) python -m infra.rehearsal down

# After its first deploy a host lets only the deploy user in (infra/deploys/layout.py DEPLOY_USER).
DEPLOY_USER := deploy

ssh:  ## a shell on the rehearsal host, as the deploy user (sudo without a password)
	ssh -F .rehearsal/ssh_config -l $(DEPLOY_USER) rehearsal

logs:  ## follow the service's journal on the rehearsal host
	ssh -F .rehearsal/ssh_config -l $(DEPLOY_USER) rehearsal sudo journalctl -u plinth.service -f -o cat

rollback:  ## rehearsal back to the previous release (or PLINTH_ROLLBACK_TO=<release id>), health-checked
	$(PYINFRA) infra/inventories/rehearsal.py infra/deploys/rollback.py

deploy-production:  ## deploy to PLINTH_HOST (see README: production)
	$(PYINFRA) infra/inventories/production.py infra/deploys/site.py

release-production:  ## app-only release to PLINTH_HOST, once deploy-production has set it up
	$(PYINFRA) infra/inventories/production.py infra/deploys/release.py

rollback-production:  ## production back to the previous release (or PLINTH_ROLLBACK_TO=<release id>), health-checked
	$(PYINFRA) infra/inventories/production.py infra/deploys/rollback.py

deploy-production-dry:  ## show what a production deploy would change, change nothing
	$(RUN) pyinfra --dry infra/inventories/production.py infra/deploys/site.py

data-keys:  ## every inventory data key: its deploy, default and meaning
	$(RUN) python -m infra.deploys.data_keys

dev:  ## throwaway PostgreSQL + the service with auto-reload on 127.0.0.1:8000
	$(RUN) python tests/service/throwaway_pg.py dev

lint:  ## ruff lint and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format:  ## apply ruff's formatting and safe fixes
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

# `make test` runs three lanes side by side (scripts/parallel_make.py): most of the time is spent
# waiting on hosts booting and deploying, not on the 2 CPUs, and the lanes use hosts of their own.
TEST_LANES := "test-service test-infra-trixie" "test-infra-bookworm" \
              "test-rehearsal-tool test-vagrant test-infra-split"

test: lint  ## every test: lint, then service, infra on bookworm and trixie, rehearsal tool, Vagrant
	$(RUN) python scripts/parallel_make.py $(TEST_LANES)

test-service:  ## the service's tests on a throwaway PostgreSQL
	$(RUN) pytest -x -q tests/service

# The host checks run a second time on Debian 13, on a rehearsal host of their own.
TRIXIE_ENV := PLINTH_REHEARSAL_RELEASE=trixie PLINTH_REHEARSAL_DIR=.rehearsal-trixie \
              PLINTH_REHEARSAL_NAME=plinth-trixie PLINTH_REHEARSAL_SUBNET=10.213.2.0/24
TRIXIE_TESTS := $(addprefix tests/infra/,test_host_provisioning.py test_host_serving.py test_host_ssh.py \
                test_host_secrets.py test_least_privilege.py test_idempotence.py test_tls.py \
                test_lynis.py)
# These boot machines of their own (tool hosts on 10.213.250-251, the Vagrant machine, the split
# topology's two hosts on 10.213.6-7).
OWN_HOST_TESTS := tests/infra/test_rehearsal_tool.py tests/infra/test_vagrant.py \
                  tests/infra/test_split_topology.py

test-infra: test-infra-bookworm test-infra-trixie test-rehearsal-tool test-vagrant test-infra-split  ## all infra tests, one after another

# A host of its own for this lane too, not the one `make rehearse` keeps (.rehearsal, 10.213.0):
# `make test` in any checkout neither meets that host's name and NAT table nor tears it down.
# (pytest run by hand uses .rehearsal, the running one if any: PLINTH_KEEP_REHEARSAL=1 keeps it.)
BOOKWORM_ENV := PLINTH_REHEARSAL_DIR=.rehearsal-test PLINTH_REHEARSAL_NAME=plinth-test \
                PLINTH_REHEARSAL_SUBNET=10.213.1.0/24

test-infra-bookworm:  ## deploys, TLS, releases, hardening on a bookworm rehearsal host
	$(BOOKWORM_ENV) $(RUN) pytest -x -q tests/infra $(addprefix --ignore=,$(OWN_HOST_TESTS))

test-infra-trixie:  ## the host checks again on a Debian 13 rehearsal host
	$(TRIXIE_ENV) $(RUN) pytest -x -q $(TRIXIE_TESTS)

test-infra-split:  ## the service on one host, PostgreSQL on another (two rehearsal hosts of its own)
	$(RUN) pytest -x -q tests/infra/test_split_topology.py

test-rehearsal-tool:  ## the rehearsal tool's own tests (boots and breaks hosts of its own)
	$(RUN) pytest -x -q tests/infra/test_rehearsal_tool.py

bench:  ## the benchmarks; each prints a table
	$(RUN) python bench/bench_service.py
	$(RUN) python bench/bench_rehearsal.py
	$(RUN) python bench/bench_release.py

# --- Vagrant (issue 7; infra/vagrant/README.md) -------------------------------------------------
VAGRANT_PROVIDER ?=

.PHONY: vagrant-box vagrant-up vagrant-deploy vagrant-destroy test-vagrant

vagrant-box:  ## build the LXC box from the rehearsal's mmdebstrap recipe, `vagrant box add` it
	$(RUN) python -m infra.vagrant box --release $(RELEASE)

vagrant-up:  ## boot the Vagrant machine and deploy plinth to it (VAGRANT_PROVIDER=lxc|libvirt)
	PLINTH_VAGRANT_RELEASE=$(RELEASE) UV=$(UV) vagrant up $(if $(VAGRANT_PROVIDER),--provider=$(VAGRANT_PROVIDER))

vagrant-deploy:  ## re-deploy plinth to the running Vagrant machine
	$(PYINFRA) infra/inventories/vagrant.py infra/deploys/site.py

vagrant-destroy:  ## destroy the Vagrant machine
	vagrant destroy -f

test-vagrant:  ## Vagrantfile validation, LXC box + vagrant up + host checks + destroy (root)
	$(RUN) pytest -x -q tests/infra/test_vagrant.py
# --- end Vagrant ---------------------------------------------------------------------------------
