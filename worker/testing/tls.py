"""Throwaway TLS material for a local secured broker and its clients: a certificate
authority, and certificates it signs (a broker's for 127.0.0.1 and localhost, a client's
for mTLS, whose common name is its Kafka principal). PEM files, keys unencrypted PKCS#8:
what Kafka's PEM key stores and Python's ``ssl`` both read.

For tests and local trials only; a real cluster's certificates come from its own CA.
Needs the ``cryptography`` package (in the ``test`` extra).
"""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertFiles:
    """One certificate and its key, as PEM files; ``ca`` is the CA certificate that signed it."""

    cert: Path
    key: Path
    ca: Path


class CertificateAuthority:
    """A self-signed CA whose certificate is written to ``folder / f"{name}-ca.crt"``."""

    def __init__(self, folder: Path, name: str = "test", days: int = 7, organization: str | None = None):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.days = days
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"{name} CA", organization)
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = self.folder / f"{name}-ca.crt"
        self.cert_path.write_bytes(self._pem(self._cert))

    @staticmethod
    def _pem(cert) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return cert.public_bytes(Encoding.PEM)

    def issue(self, common_name: str, hosts: tuple[str, ...] = (), server: bool = False,
              client: bool = True, signing: bool = False, organization: str | None = None) -> CertFiles:
        """A certificate for ``common_name`` (with ``hosts``, names or IP addresses, as its
        subject alternative names), usable for TLS servers and/or clients, or (``signing``)
        for signing C2PA manifests (digital signature, email protection: a C2PA-allowed
        use), and its key; written as ``{common_name}.crt`` (the certificate, then the CA's)
        and ``{common_name}.key``."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = [*([ExtendedKeyUsageOID.SERVER_AUTH] if server else []),
                  *([ExtendedKeyUsageOID.CLIENT_AUTH] if client and not signing else []),
                  *([ExtendedKeyUsageOID.EMAIL_PROTECTION] if signing else [])]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organization))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                           critical=False)
        )
        if signing:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True).add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        if hosts:
            names = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path = self.folder / f"{common_name}.crt"
        key_path = self.folder / f"{common_name}.key"
        cert_path.write_bytes(self._pem(cert) + self._pem(self._cert))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return CertFiles(cert_path, key_path, self.cert_path)


def _name(common_name: str, organization: str | None):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)
