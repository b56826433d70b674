"""Certificates and keys of a federation: the consortium's CA, the SuperLink's TLS certificate,
and each institution's SuperNode key pair.

Made with `cryptography` (already a Flower dependency), so no openssl or ssh-keygen is needed.
Private keys are written owner-read-only and never overwritten: rotating means new files.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrisk.config import check_institution_name
from fedrisk.errors import FedriskInputError

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServerCertificates:
    ca_certificate: Path  # give to every institution and to the flwr CLI
    certificate: Path     # the SuperLink's
    private_key: Path     # the SuperLink's; stays on its machine


@dataclass(frozen=True)
class NodeKey:
    private_key: Path  # stays at the institution (flower-supernode --auth-supernode-private-key)
    public_key: Path   # sent to the consortium operator, who registers it


def _write(path: Path, data: bytes, private: bool) -> None:
    if path.exists():
        raise FedriskInputError("exists already; keys and certificates are never overwritten (rotate into a "
                                "new folder)", file=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_server_certificates(folder: str | Path, hosts: tuple[str, ...] = DEFAULT_HOSTS,
                             days: int = 365, consortium: str = "fedrisk consortium") -> ServerCertificates:
    """A CA and the SuperLink's certificate signed by it, valid for `hosts` (names or IPs)."""
    if not hosts:
        raise FedriskInputError("the SuperLink certificate needs at least one host name or IP address")
    if days < 1:
        raise FedriskInputError(f"certificates must be valid for at least 1 day, not {days}")
    out = Path(folder)
    for name in ("ca.key", "ca.crt", "server.key", "server.pem"):
        if (out / name).exists():
            raise FedriskInputError("exists already; keys and certificates are never overwritten (rotate into "
                                    "a new folder)", file=str(out / name))
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{consortium} CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = ServerCertificates(out / "ca.crt", out / "server.pem", out / "server.key")
    _write(out / "ca.key", _pem_key(ca_key), private=True)  # signs the next server certificate; keep offline
    _write(paths.ca_certificate, ca.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.private_key, _pem_key(key), private=True)
    _write(paths.certificate, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return paths


def make_node_key(folder: str | Path, institution: str) -> NodeKey:
    """An institution's SuperNode key pair (ECDSA P-384, OpenSSH format, as Flower expects)."""
    check_institution_name(institution)
    out = Path(folder)
    key = ec.generate_private_key(ec.SECP384R1())
    paths = NodeKey(out / institution, out / f"{institution}.pub")
    _write(paths.private_key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                serialization.NoEncryption()), private=True)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(paths.public_key, public + f" {institution}\n".encode(), private=False)
    return paths


def public_key_fingerprint(public_key: str | Path) -> str:
    """SHA-256 fingerprint of an OpenSSH public key, as `ssh-keygen -lf` prints it: what the
    operator reads back to the institution before registering its key."""
    parts = Path(public_key).read_text().split()
    if len(parts) < 2:
        raise FedriskInputError("not an OpenSSH public key", file=str(public_key))
    digest = hashlib.sha256(base64.b64decode(parts[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
