"""A small private PKI for one broker: a CA, the broker's server certificate, and one client
certificate per device whose CN is the device's id, so that Mosquitto's
``use_identity_as_username`` makes the certificate the account (the ACL's ``%u``).

Files in one directory (``Layout``): ``ca.crt``, ``ca.key``, ``crl.pem``, ``server.crt``,
``server.key``, ``clients/<name>.crt`` and ``clients/<name>.key``. Keys are EC P-256, PEM,
unencrypted (devices and the broker start unattended) and written with mode 0600; nothing
is ever overwritten unless asked, and never the CA.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.config import RESERVED_ACCOUNTS
from broker.errors import BrokerError
from broker.provision import check_account_name

CA_DAYS = 3650
LEAF_DAYS = 730
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")
CLOCK_SKEW = timedelta(minutes=5)  # a certificate is valid from a little before it is made
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


@dataclass(frozen=True)
class Layout:
    """Where each file of the PKI lives."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    def client_cert(self, name: str) -> Path:
        return self.directory / "clients" / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.directory / "clients" / f"{name}.key"


@dataclass(frozen=True)
class _Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


# --- files -------------------------------------------------------------------------------


def _write(path: Path, data: bytes, *, mode: int, replace: bool) -> None:
    """Write through a temporary file; without ``replace`` the final link fails if ``path``
    appeared meanwhile, so an existing file is never clobbered."""
    try:
        _write_file(path, data, mode=mode, replace=replace)
    except OSError as error:
        raise BrokerError(f"{path}: cannot write ({error.strerror or error})") from error


def _write_file(path: Path, data: bytes, *, mode: int, replace: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # exactly this mode, whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise BrokerError(f"{path} already exists: refusing to overwrite it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _refuse_existing(paths: Sequence[Path], advice: str) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        verb = "exists" if len(existing) == 1 else "exist"
        raise BrokerError(f"{' and '.join(existing)} already {verb}: {advice}")


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_bytes(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as error:
        raise BrokerError(f"{path}: cannot read ({error.strerror})") from error
    except ValueError as error:
        raise BrokerError(f"{path}: not a PEM certificate") from error


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode()


def _load_authority(layout: Layout) -> _Authority:
    if not (layout.ca_cert.exists() and layout.ca_key.exists()):
        raise BrokerError(
            f"no CA in {layout.directory} (ca.crt and ca.key): create one first with "
            f"'fedmq-broker certs ca --dir {layout.directory}'"
        )
    cert = read_certificate(layout.ca_cert)
    try:
        key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise BrokerError(f"{layout.ca_key}: not an unencrypted PEM private key") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise BrokerError(f"{layout.ca_key} is not the EC key of {layout.ca_cert}")
    return _Authority(cert, key)


# --- certificates ------------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _check_days(days: int) -> int:
    if days < 1:
        raise BrokerError(f"validity of {days} days: give at least 1")
    return days


def _subject(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def create_ca(
    directory: Path, *, name: str = "fedmq CA", days: int = CA_DAYS, now: datetime | None = None
) -> Layout:
    """A new CA (key, self-signed certificate) and its empty CRL. Refuses when a CA is
    already there: replacing it would silently invalidate every certificate it signed."""
    layout = Layout(directory)
    _refuse_existing(
        [layout.ca_cert, layout.ca_key],
        "a CA is already there; replacing it would invalidate every certificate it signed "
        "(move it away yourself if that is what you want)",
    )
    start = _now(now)
    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_subject(name))
        .issuer_name(_subject(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + timedelta(days=_check_days(days)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(layout.ca_key, _key_bytes(key), mode=0o600, replace=False)
    _write(layout.ca_cert, _cert_bytes(cert), mode=0o644, replace=False)
    _write_crl(layout, _Authority(cert, key), [], start, replace=True)
    return layout


def _leaf(
    authority: _Authority,
    name: str,
    key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    days: int,
    now: datetime,
    alternative_names: list[x509.GeneralName],
) -> x509.Certificate:
    # never valid beyond the CA: a chain is no better than its weakest link
    until = min(now + timedelta(days=_check_days(days)), authority.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(name))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    if alternative_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alternative_names), critical=False
        )
    return builder.sign(authority.key, hashes.SHA256())


def _alternative_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not HOSTNAME.fullmatch(name):
        raise BrokerError(f"{name!r} is neither an IP address nor a host name")
    return x509.DNSName(name.lower())


def issue_server_certificate(
    directory: Path,
    names: Sequence[str] = DEFAULT_SERVER_NAMES,
    *,
    days: int = LEAF_DAYS,
    replace: bool = False,
    now: datetime | None = None,
) -> tuple[Path, Path]:
    """The broker's certificate and key, valid for ``names`` (host names and IP addresses
    that clients connect to: they check it). Returns (certificate, key)."""
    layout = Layout(directory)
    if not names:
        raise BrokerError("give at least one host name or IP address for the broker")
    alternative_names = [_alternative_name(name) for name in names]
    authority = _load_authority(layout)
    if not replace:
        _refuse_existing([layout.server_cert, layout.server_key], "pass --replace to renew it")
    key = _new_key()
    cert = _leaf(
        authority,
        names[0],
        key,
        ExtendedKeyUsageOID.SERVER_AUTH,
        days,
        _now(now),
        alternative_names,
    )
    _write(layout.server_key, _key_bytes(key), mode=0o600, replace=replace)
    _write(layout.server_cert, _cert_bytes(cert), mode=0o644, replace=replace)
    return layout.server_cert, layout.server_key


def issue_client_certificate(
    directory: Path,
    name: str,
    *,
    service: bool = False,
    days: int = LEAF_DAYS,
    replace: bool = False,
    now: datetime | None = None,
) -> tuple[Path, Path]:
    """A device's certificate and key, CN = ``name`` (its agent id, hence its username).
    ``coordinator`` and ``monitor`` hold more rights than a device: they get a certificate
    only with ``service``. Replacing a certificate revokes the old one. Returns
    (certificate, key)."""
    layout = Layout(directory)
    check_account_name(name)
    if service != (name in RESERVED_ACCOUNTS):
        if service:
            raise BrokerError(
                f"{name!r} is not a service account ({', '.join(sorted(RESERVED_ACCOUNTS))})"
            )
        raise BrokerError(
            f"{name!r} is a service account with more rights than a device: "
            "issue its certificate with --service"
        )
    authority = _load_authority(layout)
    cert_path, key_path = layout.client_cert(name), layout.client_key(name)
    if not replace:
        _refuse_existing(
            [cert_path, key_path], "pass --replace to renew it (the old one is revoked)"
        )
    start = _now(now)
    old = read_certificate(cert_path) if replace and cert_path.exists() else None
    key = _new_key()
    cert = _leaf(authority, name, key, ExtendedKeyUsageOID.CLIENT_AUTH, days, start, [])
    _write(key_path, _key_bytes(key), mode=0o600, replace=replace)
    _write(cert_path, _cert_bytes(cert), mode=0o644, replace=replace)
    if old is not None:
        _revoke(layout, authority, old.serial_number, start)
    return cert_path, key_path


# --- revocation --------------------------------------------------------------------------


def read_crl(layout: Layout) -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl(layout.crl.read_bytes())
    except OSError as error:
        raise BrokerError(f"{layout.crl}: cannot read ({error.strerror})") from error
    except ValueError as error:
        raise BrokerError(f"{layout.crl}: not a PEM certificate revocation list") from error


def _write_crl(
    layout: Layout,
    authority: _Authority,
    revoked: list[x509.RevokedCertificate],
    now: datetime,
    *,
    replace: bool,
) -> None:
    # next_update is the CA's own expiry: OpenSSL refuses every client once a CRL is past
    # its next update, and this CRL is handed to the broker directly, not fetched.
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(authority.cert.not_valid_after_utc)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(authority.key, hashes.SHA256())
    _write(layout.crl, crl.public_bytes(serialization.Encoding.PEM), mode=0o644, replace=replace)


def _revoke(layout: Layout, authority: _Authority, serial: int, now: datetime) -> None:
    revoked = list(read_crl(layout)) if layout.crl.exists() else []
    if any(entry.serial_number == serial for entry in revoked):
        return
    revoked.append(
        x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
    )
    _write_crl(layout, authority, revoked, now, replace=True)


def revoke_client_certificate(directory: Path, name: str, *, now: datetime | None = None) -> int:
    """Add a device's current certificate to the CRL (``crl.pem``) and return its serial.
    Mosquitto rereads the CRL on SIGHUP (``systemctl reload mosquitto``); connections
    already open stay open until the device reconnects or the broker restarts."""
    layout = Layout(directory)
    check_account_name(name)
    authority = _load_authority(layout)
    cert_path = layout.client_cert(name)
    if not cert_path.exists():
        raise BrokerError(f"no certificate for {name!r} ({cert_path} does not exist)")
    serial = read_certificate(cert_path).serial_number
    _revoke(layout, authority, serial, _now(now))
    return serial
