"""HTTPS to the deployed service the way a client on the Internet reaches it: the certificate
verified against the rehearsal's ACME root, SNI and Host = the domain, the TCP connection to
the host's address (curl's --resolve)."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
from pathlib import Path


def tls_context(rehearsal: dict) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(rehearsal["acme_root"]))


class _Connection(http.client.HTTPSConnection):
    def __init__(self, address: str, domain: str, context: ssl.SSLContext, timeout: float):
        super().__init__(domain, 443, context=context, timeout=timeout)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def request(rehearsal: dict, method: str, path: str, body=None, timeout: float = 10.0):
    """(status, headers, parsed JSON or raw bytes)."""
    connection = _Connection(
        rehearsal["address"], rehearsal["domain"], tls_context(rehearsal), timeout
    )
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        headers = {key.lower(): value for key, value in response.getheaders()}
    finally:
        connection.close()
    try:
        return response.status, headers, json.loads(raw)
    except ValueError:
        return response.status, headers, raw


def raw_tls_socket(rehearsal: dict, timeout: float) -> ssl.SSLSocket:
    sock = socket.create_connection((rehearsal["address"], 443), timeout)
    return tls_context(rehearsal).wrap_socket(sock, server_hostname=rehearsal["domain"])


@contextlib.contextmanager
def resolving(domain: str, address: str):
    """Inside: `domain` resolves to `address` in this process (for libraries that only take a
    URL, e.g. requests under schemathesis)."""
    original = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return original(address if host == domain else host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = original


IRIS = {
    "sepal_length_cm": 5.1,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}
PREDICT_PATH = "/v1/models/iris/predict"


def acme_root(rehearsal: dict) -> Path:
    return Path(rehearsal["acme_root"])
