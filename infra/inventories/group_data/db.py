"""Hosts that run PostgreSQL (see infra/deploys/postgres.py). When the database lives on
another host than the service, set db_host (the app side) and db_listen_addresses /
db_client_networks (the db side) in host data."""
