"""A throw-away PKI for the TLS tests, made with `cryptography`: our CA, broker and client certificates, and a
rogue CA whose broker certificate our clients must refuse."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SSL_PASSWORD = "planted-ssl-key-password-K3m1"  # protects the client key
CLIENT_CN = "videotag-client"

KeyAndCert = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def make_ca(name: str) -> KeyAndCert:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(ca: KeyAndCert, name: str, server: bool, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> KeyAndCert:
    """A certificate signed by `ca`: for a server (with `hosts` as subject alternative names) or a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca[0], hashes.SHA256())


def write_pem(path: Path, cert: x509.Certificate | None = None, key: Any = None, password: str | None = None) -> str:
    """Write a certificate, or a PKCS#8 key (0600, encrypted when `password` is given); returns the path."""
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        encryption = (
            serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
        )
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
        path.chmod(0o600)
    return str(path)


def make_pki(directory: Path) -> dict[str, str]:
    """Our CA; a broker certificate for localhost/127.0.0.1 and a client certificate (key protected by
    SSL_PASSWORD) signed by it; a second CA and a broker certificate from it, which clients of our CA must
    refuse; and a certificate of our CA for another host name. Returns the file paths by role."""
    d = directory
    ca, rogue = make_ca("videotag-test-ca"), make_ca("rogue-ca")
    broker, client = issue(ca, "broker", server=True), issue(ca, CLIENT_CN, server=False)
    rogue_broker = issue(rogue, "broker", server=True)
    elsewhere = issue(ca, "elsewhere", server=True, hosts=("kafka.example.com",))
    return {
        "ca": write_pem(d / "ca.pem", ca[1]),
        "broker_cert": write_pem(d / "broker.pem", broker[1]),
        "broker_key": write_pem(d / "broker.key", key=broker[0]),
        "client_cert": write_pem(d / "client.pem", client[1]),
        "client_key": write_pem(d / "client.key", key=client[0], password=SSL_PASSWORD),
        "rogue_cert": write_pem(d / "rogue.pem", rogue_broker[1]),
        "rogue_key": write_pem(d / "rogue.key", key=rogue_broker[0]),
        "elsewhere_cert": write_pem(d / "elsewhere.pem", elsewhere[1]),
        "elsewhere_key": write_pem(d / "elsewhere.key", key=elsewhere[0]),
    }


def client_tls_settings(pki: dict[str, str]) -> dict[str, str]:
    """Worker settings for mutual TLS with our CA and the client certificate (as `Settings` fields)."""
    return {
        "security_protocol": "SSL",
        "ssl_cafile": pki["ca"],
        "ssl_certfile": pki["client_cert"],
        "ssl_keyfile": pki["client_key"],
        "ssl_password": SSL_PASSWORD,
    }
