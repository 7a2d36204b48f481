"""Taking a client's access away without a restart, as gthread (which builds a TLS context per
connection) allows: a CA removed from the `ca_certs` file, a certificate revoked in a CRL that an
ssl_context hook loads. Real masters, real TLS clients."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from server import Conn, wait_until

from .helpers import tls_serve

REQUEST = b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
# Failure detection only: how long the worker may take to apply a change to its next connections
# (seconds). It looks at the files once a second, and rebuilds a hook's context 2 s old.
APPLIED = 30.0
# With this hook, client certificates are checked against the CRL file $TEST_CRL (replaced by
# whoever revokes one, without telling gunicorn).
CRL_HOOK = """
import os, ssl

def ssl_context(conf, default_ssl_context_factory):
    context = default_ssl_context_factory()
    context.load_verify_locations(cafile=os.environ["TEST_CRL"])
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    return {"ca": ca, "other_ca": other_ca, "server": str(tmp / "server.pem"),
            "client": ca.issue_cert("client@ca.test"),
            "other_client": other_ca.issue_cert("client@other-ca.test")}


def replace(path: Path, data: bytes) -> None:
    """As a deployment replaces a file: written beside it, then renamed over it."""
    new = path.with_name(path.name + ".new")
    new.write_bytes(data)
    os.replace(new, path)


def answered(g: Any, pki: dict[str, Any], client: Any) -> bool:
    """Whether a new connection presenting `client`'s certificate is served (else refused)."""
    context = ssl.create_default_context()
    pki["ca"].configure_trust(context)
    client.configure_cert(context)
    try:
        sock = context.wrap_socket(socket.create_connection((g.host, g.port), timeout=10),
                                   server_hostname="127.0.0.1")
        with Conn(sock) as conn:
            conn.send(REQUEST)
            return conn.response()[0] == 200
    except (ssl.SSLError, ConnectionError):  # TLS 1.3: refused after the client's handshake
        return False


def crl(ca: trustme.CA, revoked: list[Any]) -> bytes:
    """A CRL signed by `ca` listing the serial numbers of `revoked` leaf certificates."""
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer)
               .last_update(now - datetime.timedelta(minutes=5))
               .next_update(now + datetime.timedelta(days=1)))
    for leaf in revoked:
        serial = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(now - datetime.timedelta(minutes=1)).build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_a_ca_taken_out_of_ca_certs_is_refused_from_the_next_connections(pki, tmp_path):
    cas = tmp_path / "cas.pem"
    cas.write_bytes(pki["ca"].cert_pem.bytes() + pki["other_ca"].cert_pem.bytes())
    with tls_serve("--certfile", pki["server"], "--keyfile", pki["server"], "--ca-certs", str(cas),
                   "--cert-reqs", str(int(ssl.CERT_REQUIRED))) as g:
        worker = g.worker_pid()
        assert answered(g, pki, pki["other_client"])
        replace(cas, pki["ca"].cert_pem.bytes())
        wait_until(lambda: not answered(g, pki, pki["other_client"]), APPLIED,
                   "the other CA's client refused")
        assert not answered(g, pki, pki["other_client"])  # for good, not one refusal
        assert answered(g, pki, pki["client"])
        assert g.worker_pid() == worker  # no restart
        assert "Invalid request from ip=127.0.0.1: [SSL: CERTIFICATE_VERIFY_FAILED]" in g.log()


def test_a_certificate_revoked_in_a_crl_the_ssl_context_hook_loads_is_refused(pki, tmp_path):
    config, crl_file, cas = tmp_path / "crl_conf.py", tmp_path / "crl.pem", tmp_path / "ca.pem"
    config.write_text(CRL_HOOK)
    crl_file.write_bytes(crl(pki["ca"], []))
    cas.write_bytes(pki["ca"].cert_pem.bytes())
    with tls_serve("--certfile", pki["server"], "--keyfile", pki["server"], "--ca-certs", str(cas),
                   "--cert-reqs", str(int(ssl.CERT_REQUIRED)), config=str(config),
                   env={"TEST_CRL": str(crl_file)}) as g:
        worker = g.worker_pid()
        assert answered(g, pki, pki["client"])
        replace(crl_file, crl(pki["ca"], [pki["client"]]))
        wait_until(lambda: not answered(g, pki, pki["client"]), APPLIED, "the revoked client refused")
        assert not answered(g, pki, pki["client"])
        assert g.worker_pid() == worker
        assert "certificate revoked" in g.log()
