"""Broker settings: how clients reach the broker, and how fedmq configures Mosquitto."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

MIB = 1024 * 1024


class BrokerConnection(BaseModel):
    """What a client (coordinator, agent, CLI) needs to reach the broker."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    keepalive: int = Field(30, ge=5, le=3600, description="seconds between MQTT pings")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to wait for CONNACK")


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
