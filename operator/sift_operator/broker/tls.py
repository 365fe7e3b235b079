"""The broker's TLS: a serving certificate from files (cert-manager) or one it makes.

In a cluster the broker's certificate must be trusted by every worker. Either the
deployment mounts one (``tls.crt``/``tls.key``/``ca.crt`` of a cert-manager Secret)
and names the files in the settings, or the operator makes a private CA and a serving
certificate for the broker Service's DNS names at startup (``cryptography``). The CA
certificate (public) goes into every run's ConfigMap; its key never leaves the
operator process.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["BrokerTLS", "load_tls", "make_self_signed", "service_dns_names"]

CERT_DAYS = 365


@dataclass(frozen=True, repr=False)
class BrokerTLS:
    """PEM texts of the serving chain; ``ca_pem`` is what workers trust."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain reads files only: a private temporary directory, removed at once
        with tempfile.TemporaryDirectory(prefix="sift-tls-") as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert.write_bytes(self.cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(self.key_pem)
            ctx.load_cert_chain(cert, key)
        return ctx

    def __repr__(self) -> str:
        return "BrokerTLS(<certificate and key>)"


def service_dns_names(service: str, namespace: str) -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sift"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_self_signed(names: Iterable[str], *, days: int = CERT_DAYS) -> BrokerTLS:
    """A fresh CA (P-256) and a serving certificate for ``names`` (DNS names or IPs)."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("sift broker CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    names = list(names)
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0] if names else "sift-broker"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    del ca_key  # the CA signs this one certificate only
    return BrokerTLS(cert.public_bytes(pem), _pem_key(key), ca.public_bytes(pem))


def load_tls(cert_file: str, key_file: str, ca_file: str | None) -> BrokerTLS:
    """A mounted chain (cert-manager: ``tls.crt``, ``tls.key``, ``ca.crt``); the CA
    defaults to the last certificate of ``cert_file``."""
    cert = Path(cert_file).read_bytes()
    key = Path(key_file).read_bytes()
    if ca_file:
        ca = Path(ca_file).read_bytes()
    else:
        chain = x509.load_pem_x509_certificates(cert)
        ca = chain[-1].public_bytes(serialization.Encoding.PEM)
    return BrokerTLS(cert, key, ca)
