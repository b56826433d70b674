"""Certificates and node keys made by fedrisk, checked with independent tools (ssl, cryptography's
loaders that Flower uses, ssh-keygen)."""

from __future__ import annotations

import shutil
import ssl
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)

from fedrisk.certificates import (
    make_node_key,
    make_server_certificates,
    public_key_fingerprint,
)
from fedrisk.errors import FedriskInputError


def test_server_certificate_is_signed_by_the_ca_for_the_hosts_named(tmp_path):
    made = make_server_certificates(tmp_path, ("link.bank.example", "10.0.0.5"))
    ca = x509.load_pem_x509_certificate(made.ca_certificate.read_bytes())
    cert = x509.load_pem_x509_certificate(made.certificate.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises unless the CA signed it
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["link.bank.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # what a TLS server and a client checking against the CA load
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(made.certificate, made.private_key)
    ssl.create_default_context(cafile=str(made.ca_certificate))
    for private in (made.private_key, tmp_path / "ca.key"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_openssl_verifies_the_chain(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    made = make_server_certificates(tmp_path)
    out = subprocess.run(["openssl", "verify", "-CAfile", made.ca_certificate, made.certificate],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(": OK")


def test_node_key_loads_as_flower_loads_it_and_matches_ssh_keygen(tmp_path):
    key = make_node_key(tmp_path, "inst01")
    private = load_ssh_private_key(key.private_key.read_bytes(), password=None)
    public = load_ssh_public_key(key.public_key.read_bytes())
    assert private.public_key().public_numbers() == public.public_numbers()
    assert private.curve.name == "secp384r1"
    assert stat.S_IMODE(key.private_key.stat().st_mode) == 0o600
    if shutil.which("ssh-keygen"):
        listed = subprocess.run(["ssh-keygen", "-lf", key.public_key], capture_output=True, text=True, check=True)
        assert listed.stdout.split()[1] == public_key_fingerprint(key.public_key)


def test_keys_and_certificates_are_never_overwritten(tmp_path):
    make_node_key(tmp_path, "inst01")
    with pytest.raises(FedriskInputError, match="never overwritten"):
        make_node_key(tmp_path, "inst01")
    make_server_certificates(tmp_path / "c")
    with pytest.raises(FedriskInputError, match="never overwritten"):
        make_server_certificates(tmp_path / "c")
    for bad in ("../x", "O'Brien Bank", ""):
        with pytest.raises(FedriskInputError, match="not a usable institution name"):
            make_node_key(tmp_path, bad)
    with pytest.raises(FedriskInputError, match="at least 1 day"):
        make_server_certificates(tmp_path / "d", days=0)
