"""The private PKI (broker/tls.py): what each certificate says, that the chain verifies with
OpenSSL itself, that keys stay private and that nothing is overwritten by accident."""

from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from broker.cli import app
from broker.errors import BrokerError
from broker.tls import (
    Layout,
    common_name,
    create_ca,
    issue_client_certificate,
    issue_server_certificate,
    read_certificate,
    read_crl,
    revoke_client_certificate,
)


@pytest.fixture
def pki(tmp_path: Path) -> Layout:
    return create_ca(tmp_path / "pki")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def openssl_verify(layout: Layout, cert: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """OpenSSL's own verdict, independent of the code under test."""
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(layout.ca_cert), *options, str(cert)],
        capture_output=True,
        text=True,
        check=False,
    )


E = TypeVar("E", bound=x509.ExtensionType)


def extension(cert: x509.Certificate, kind: type[E]) -> E:
    return cert.extensions.get_extension_for_class(kind).value


def validity_days(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - cert.not_valid_before_utc) / timedelta(days=1)


def test_ca_is_a_self_signed_p256_authority_valid_ten_years(pki: Layout):
    cert = read_certificate(pki.ca_cert)
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.ca is True and constraints.path_length == 0
    usage = extension(cert, x509.KeyUsage)
    assert usage.key_cert_sign and usage.crl_sign
    assert 3650 <= validity_days(cert) < 3651
    assert common_name(cert) == "fedmq CA"
    assert list(read_crl(pki)) == []
    assert read_crl(pki).is_signature_valid(cert.public_key())  # type: ignore[arg-type]


def test_keys_are_private_whatever_the_umask(tmp_path: Path):
    previous = os.umask(0)
    try:
        layout = create_ca(tmp_path / "pki")
        issue_server_certificate(layout.directory)
        issue_client_certificate(layout.directory, "jetson-07")
    finally:
        os.umask(previous)
    for key in (layout.ca_key, layout.server_key, layout.client_key("jetson-07")):
        assert mode(key) == 0o600, key
        loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    for cert in (layout.ca_cert, layout.server_cert, layout.client_cert("jetson-07")):
        assert mode(cert) == 0o644, cert
    assert not list(layout.directory.rglob(".*.tmp"))


def test_server_certificate_names_the_broker_and_chains_to_the_ca(pki: Layout):
    cert_path, _ = issue_server_certificate(pki.directory)
    cert = read_certificate(cert_path)
    names = extension(cert, x509.SubjectAlternativeName)
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert list(extension(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert extension(cert, x509.BasicConstraints).ca is False
    assert 730 <= validity_days(cert) < 731
    assert openssl_verify(pki, cert_path, "-purpose", "sslserver").returncode == 0
    # a server certificate is no client certificate
    assert openssl_verify(pki, cert_path, "-purpose", "sslclient").returncode != 0


def test_server_certificate_for_given_names_and_addresses(pki: Layout):
    cert_path, _ = issue_server_certificate(
        pki.directory, ["Broker.Example.lan", "10.0.0.5", "::1"], days=30
    )
    cert = read_certificate(cert_path)
    names = extension(cert, x509.SubjectAlternativeName)
    assert names.get_values_for_type(x509.DNSName) == ["broker.example.lan"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    assert common_name(cert) == "Broker.Example.lan"
    assert 30 <= validity_days(cert) < 31
    result = openssl_verify(pki, cert_path, "-verify_hostname", "broker.example.lan")
    assert result.returncode == 0, result.stderr
    assert openssl_verify(pki, cert_path, "-verify_hostname", "other.lan").returncode != 0
    assert openssl_verify(pki, cert_path, "-verify_ip", "10.0.0.5").returncode == 0


def test_device_certificate_cn_is_the_device_id(pki: Layout):
    cert_path, key_path = issue_client_certificate(pki.directory, "jetson-07")
    assert (cert_path, key_path) == (pki.client_cert("jetson-07"), pki.client_key("jetson-07"))
    cert = read_certificate(cert_path)
    assert common_name(cert) == "jetson-07"
    assert list(extension(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()
    checked = openssl_verify(
        pki, cert_path, "-purpose", "sslclient", "-crl_check", "-CRLfile", str(pki.crl)
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    assert openssl_verify(pki, cert_path, "-purpose", "sslserver").returncode != 0


def test_a_leaf_never_outlives_its_ca(tmp_path: Path):
    layout = create_ca(tmp_path / "pki", days=100)
    cert = read_certificate(issue_client_certificate(layout.directory, "a", days=730)[0])
    assert cert.not_valid_after_utc == read_certificate(layout.ca_cert).not_valid_after_utc


def test_the_ca_is_never_replaced(pki: Layout):
    before = {path: path.read_bytes() for path in (pki.ca_cert, pki.ca_key, pki.crl)}
    with pytest.raises(BrokerError, match="a CA is already there"):
        create_ca(pki.directory)
    assert {path: path.read_bytes() for path in before} == before


def test_existing_leaf_certificates_are_kept_unless_replaced(pki: Layout):
    issue_server_certificate(pki.directory)
    issue_client_certificate(pki.directory, "jetson-07")
    kept = pki.client_cert("jetson-07").read_bytes()
    with pytest.raises(BrokerError, match=r"server\.crt and .*server\.key already exist"):
        issue_server_certificate(pki.directory)
    with pytest.raises(BrokerError, match="pass --replace"):
        issue_client_certificate(pki.directory, "jetson-07")
    assert pki.client_cert("jetson-07").read_bytes() == kept


def test_renewing_a_device_certificate_revokes_the_old_one(pki: Layout):
    old = read_certificate(issue_client_certificate(pki.directory, "jetson-07")[0])
    new = read_certificate(issue_client_certificate(pki.directory, "jetson-07", replace=True)[0])
    assert new.serial_number != old.serial_number
    revoked = [entry.serial_number for entry in read_crl(pki)]
    assert revoked == [old.serial_number]
    checked = openssl_verify(
        pki, pki.client_cert("jetson-07"), "-crl_check", "-CRLfile", str(pki.crl)
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_revoked_certificate_fails_openssl_crl_check(pki: Layout):
    cert_path, _ = issue_client_certificate(pki.directory, "jetson-07")
    issue_client_certificate(pki.directory, "jetson-08")
    serial = revoke_client_certificate(pki.directory, "jetson-07")
    assert serial == read_certificate(cert_path).serial_number
    revoke_client_certificate(pki.directory, "jetson-07")  # twice: listed once
    crl = read_crl(pki)
    assert [entry.serial_number for entry in crl] == [serial]
    assert crl.is_signature_valid(read_certificate(pki.ca_cert).public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc == read_certificate(pki.ca_cert).not_valid_after_utc
    crl_check = ("-crl_check", "-CRLfile", str(pki.crl))
    refused = openssl_verify(pki, cert_path, *crl_check)
    assert refused.returncode != 0 and "revoked" in refused.stdout + refused.stderr
    assert openssl_verify(pki, pki.client_cert("jetson-08"), *crl_check).returncode == 0


@pytest.mark.parametrize(
    ("name", "service", "problem"),
    [
        ("a/b", False, "not a valid topic level"),
        ("+", False, "not a valid topic level"),
        ("", False, "not a valid topic level"),
        ("coordinator", False, "is a service account"),
        ("monitor", False, "is a service account"),
        ("jetson-07", True, "is not a service account"),
    ],
)
def test_client_names_are_checked(pki: Layout, name: str, service: bool, problem: str):
    with pytest.raises(BrokerError, match=problem):
        issue_client_certificate(pki.directory, name, service=service)


def test_service_certificate_for_the_coordinator(pki: Layout):
    cert_path, _ = issue_client_certificate(pki.directory, "coordinator", service=True)
    assert common_name(read_certificate(cert_path)) == "coordinator"


@pytest.mark.parametrize("name", ["bad_name", "a..b", "-x", "x" * 64 + ".lan"])
def test_server_names_are_checked(pki: Layout, name: str):
    with pytest.raises(BrokerError, match="neither an IP address nor a host name"):
        issue_server_certificate(pki.directory, [name])


def test_issuing_without_a_ca_says_how_to_make_one(tmp_path: Path):
    with pytest.raises(BrokerError, match="fedmq-broker certs ca --dir"):
        issue_client_certificate(tmp_path, "jetson-07")


def test_expiry_is_measured_from_now(pki: Layout):
    past = datetime.now(timezone.utc) - timedelta(days=400)
    cert = read_certificate(issue_client_certificate(pki.directory, "old", days=365, now=past)[0])
    assert cert.not_valid_after_utc < datetime.now(timezone.utc)
    assert openssl_verify(pki, pki.client_cert("old")).returncode != 0


def test_cli_creates_the_pki_and_reports_errors_in_one_line(tmp_path: Path):
    runner = CliRunner()
    directory = str(tmp_path / "pki")
    for arguments in (
        ["certs", "ca", "--dir", directory],
        ["certs", "server", "broker.lan", "10.0.0.5", "--dir", directory],
        ["certs", "device", "jetson-07", "--dir", directory],
        ["certs", "service", "coordinator", "--dir", directory],
        ["certs", "revoke", "jetson-07", "--dir", directory],
    ):
        result = runner.invoke(app, arguments)
        assert result.exit_code == 0, (arguments, result.output)
    layout = Layout(Path(directory))
    assert common_name(read_certificate(layout.client_cert("jetson-07"))) == "jetson-07"
    assert len(list(read_crl(layout))) == 1

    again = runner.invoke(app, ["certs", "ca", "--dir", directory])
    assert again.exit_code == 2
    assert again.stderr.count("\n") == 1 and again.stderr.startswith("error: ")
    assert "a CA is already there" in again.stderr
    wrong = runner.invoke(app, ["certs", "device", "coordinator", "--dir", directory])
    assert wrong.exit_code == 2 and "--service" in wrong.stderr


def test_an_unwritable_directory_is_one_clear_error(tmp_path: Path):
    (tmp_path / "file").write_text("")
    with pytest.raises(BrokerError, match="cannot write"):
        create_ca(tmp_path / "file" / "pki")
