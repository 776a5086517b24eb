"""Hosts that run PostgreSQL (see infra/deploys/postgres.py). When the database lives on
another host than the service, set in host data:
- on the app host: db_host (the db host's address) and app_ip_address_allow (that address:
  the service's unit may reach nothing but localhost otherwise);
- on the db host: db_listen_addresses (an address the app host reaches), db_client_networks
  (the app host's address, with its prefix length) and firewall_tcp_ports [5432] (with 80
  and 443 too if it is an app host as well; open to everyone: pg_hba.conf then admits only
  db_client_networks, with scram-sha-256);
- the two roles' passwords, the same on both hosts: deploy the db host first (it generates
  /etc/plinth/database-password and /etc/plinth/database-owner-password), copy both to each
  app host (same paths, 0600 root) through a pipe, never a command line:
      f=/etc/plinth/database-password   # then f=/etc/plinth/database-owner-password
      ssh DB sudo cat $f | ssh APP sudo install -D -m 600 /dev/stdin $f
  then deploy the app hosts.
infra/inventories/rehearsal_split.py rehearses all of it on two hosts (tests/infra/
test_split_topology.py); test_database_over_the_network.py its network part on one."""
