"""Certificates and keys for the local cluster: one CA, the API server's serving and kubelet-client certs, SA keys."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 30


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _cert(subject: x509.Name, key, issuer: x509.Name, issuer_key, *, ca: bool = False, server: bool = False,
          sans: list[str] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                      content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        names = []
        for san in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: Path, *, service_ip: str = "10.0.0.1") -> dict[str, Path]:
    """Write ca.{crt,key}, apiserver.{crt,key}, apiserver-kubelet-client.{crt,key} and sa.{key,pub}; return paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in (
        "ca.crt", "ca.key", "apiserver.crt", "apiserver.key", "kubelet-client.crt", "kubelet-client.key",
        "sa.key", "sa.pub")}
    ca_key = _key()
    ca_name = _name("trainyard-local-ca")
    _write_key(ca_key, paths["ca.key"])
    _write_cert(_cert(ca_name, ca_key, ca_name, ca_key, ca=True), paths["ca.crt"])

    server_key = _key()
    _write_key(server_key, paths["apiserver.key"])
    _write_cert(_cert(_name("kube-apiserver"), server_key, ca_name, ca_key, server=True,
                      sans=["127.0.0.1", service_ip, "localhost", "kubernetes", "kubernetes.default",
                            "kubernetes.default.svc"]), paths["apiserver.crt"])

    # The API server's identity towards the kubelet (logs, exec): in system:masters, so the kubelet's webhook
    # authorization lets it read container logs.
    client_key = _key()
    _write_key(client_key, paths["kubelet-client.key"])
    _write_cert(_cert(_name("kube-apiserver-kubelet-client", "system:masters"), client_key, ca_name, ca_key),
                paths["kubelet-client.crt"])

    sa_key = _key()
    _write_key(sa_key, paths["sa.key"])
    paths["sa.pub"].write_bytes(sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    return paths
