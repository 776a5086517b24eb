"""Hosts that run the service and nginx (see infra/deploys/app.py, nginx.py)."""
