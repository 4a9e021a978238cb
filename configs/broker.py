"""Broker settings: how clients reach the broker, and how fedmq configures Mosquitto."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, model_validator

MIB = 1024 * 1024
TLS_PORT = 8883
TLS_DIRECTORY = "/etc/mosquitto/fedmq/tls"


class ClientTls(BaseModel):
    """TLS for a client: the CA that signed the broker's certificate, and optionally this
    device's own certificate and key (``fedmq-broker certs device``). With a client
    certificate on a listener that uses it as identity, the certificate's CN is the MQTT
    username and no password is needed."""

    model_config = ConfigDict(extra="forbid")

    ca_file: FilePath = Field(
        description="PEM CA certificate the broker's certificate must chain to"
    )
    cert_file: FilePath | None = Field(None, description="PEM client certificate")
    key_file: FilePath | None = Field(None, description="PEM private key of cert_file")

    @model_validator(mode="after")
    def _pair(self) -> ClientTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self

    def certificate_name(self) -> str | None:
        """The client certificate's CN (the identity the broker will use), or None."""
        if self.cert_file is None:
            return None
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        try:
            certificate = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        except (OSError, ValueError) as error:
            raise ValueError(f"cert_file {self.cert_file}: not a PEM certificate") from error
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None


class BrokerConnection(BaseModel):
    """What a client (coordinator, agent, CLI) needs to reach the broker."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535, description=f"default {TLS_PORT} when tls is set")
    username: str | None = None
    password: SecretStr | None = None
    keepalive: int = Field(30, ge=5, le=3600, description="seconds between MQTT pings")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to wait for CONNACK")
    tls: ClientTls | None = Field(None, description="None: plain MQTT")

    @model_validator(mode="after")
    def _tls_port(self) -> BrokerConnection:
        if self.tls is not None and "port" not in self.model_fields_set:
            self.port = TLS_PORT
        return self


class TlsListener(BaseModel):
    """A second Mosquitto listener, with TLS. By default devices authenticate with a client
    certificate whose CN becomes their username (the ACL's ``%u``), so a device holds a key
    instead of a password and cannot claim another name."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(TLS_PORT, ge=0, le=65535)
    bind_address: str | None = Field(None, description="None listens on every interface")
    cafile: str = f"{TLS_DIRECTORY}/ca.crt"
    certfile: str = f"{TLS_DIRECTORY}/server.crt"
    keyfile: str = f"{TLS_DIRECTORY}/server.key"
    crlfile: str | None = Field(
        f"{TLS_DIRECTORY}/crl.pem", description="revoked client certificates; None: no CRL"
    )
    require_certificate: bool = Field(True, description="refuse clients without a certificate")
    use_identity_as_username: bool = Field(
        True, description="the certificate's CN is the username; passwords are not used here"
    )
    tls_version: Literal["tlsv1.2", "tlsv1.3"] = Field("tlsv1.2", description="the minimum")

    @model_validator(mode="after")
    def _identity_needs_certificate(self) -> TlsListener:
        if self.use_identity_as_username and not self.require_certificate:
            raise ValueError("use_identity_as_username needs require_certificate: true")
        if self.crlfile is not None and not self.require_certificate:
            raise ValueError("crlfile applies to client certificates: set require_certificate")
        return self


class MosquittoSettings(BaseModel):
    """The values fedmq writes into a Mosquitto configuration (production or development)."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(1883, ge=0, le=65535)
    bind_address: str | None = Field(None, description="None listens on every interface")
    password_file: str = "/etc/mosquitto/fedmq/passwd"
    acl_file: str = "/etc/mosquitto/fedmq/acl"
    persistence_location: str | None = Field(
        "/var/lib/mosquitto/", description="None turns persistence off"
    )
    autosave_interval: int = Field(60, ge=1, description="seconds between persistence saves")
    max_packet_size: int = Field(
        64 * MIB, ge=1024, description="bytes; a client that exceeds it is disconnected"
    )
    max_queued_messages: int = Field(5000, ge=1, description="per offline client")
    max_queued_bytes: int = Field(512 * MIB, ge=1, description="per offline client")
    max_keepalive: int = Field(300, ge=10)
    log_dest: str = "syslog"
    run_as_root: bool = Field(
        False, description="write 'user root' (a broker started as root in a root-only dir)"
    )
    tls: TlsListener | None = Field(None, description="None: the password listener only")

    @model_validator(mode="after")
    def _distinct_ports(self) -> MosquittoSettings:
        if self.tls is not None and self.tls.port == self.port and self.port != 0:
            raise ValueError(f"tls.port and port are both {self.port}: give each listener its own")
        return self
