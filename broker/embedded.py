"""An embedded fallback broker for machines without Mosquitto, so that the local run works
with pip alone: amqtt (pure Python) in a child process (``python -m broker.embedded
--config <dir>/amqtt.json``) on a free loopback port, with the same interface as
:class:`broker.dev.DevBroker` and, as far as amqtt allows, the same rules.

Enforced, as on DevBroker's Mosquitto:

- no anonymous access; a password per account, checked against argon2 hashes (pwdlib) in
  ``amqtt.passwd``. The plain passwords are kept in ``credentials.json`` (0600), the same file
  and format as DevBroker's, so both brokers can share a directory.
- the access rules of :func:`broker.config.render_acl`: amqtt's topic ACL plugin has no
  ``%u`` patterns, so the ACL text is parsed and expanded for every provisioned account into
  ``publish-acl``, ``subscribe-acl`` and ``receive-acl`` entries (``amqtt-acl.json``). Like
  Mosquitto, the patterns apply to every account, the coordinator and monitor included.
- an account provisioned while the broker runs works at once: the child re-reads the
  password and ACL files whenever they have been replaced (no restart, no lost connection).
- a client's last will must be on a topic it may publish to, or its connection is refused
  (as Mosquitto 2 does; amqtt 0.12.1 itself publishes wills unchecked).
- a client id belongs to the first account that logged in with it (until the broker
  restarts): a login by another account with that id is refused, where amqtt would hand it
  the first account's persistent session and the messages queued for it.
- amqtt 0.12.1 sends each connecting client the retained messages matching every
  subscription held by *anyone* on the broker, unchecked; the broker here sends a client only
  retained messages for its own subscriptions, and only those it may receive.

Not enforced, or not like Mosquitto (amqtt 0.12.1):

- ``max_packet_size`` is accepted and kept, but amqtt has no packet size limit: a client can
  send a packet of up to the MQTT maximum (256 MiB), which the broker reads into memory.
- a subscription is granted only when its filter lies, level by level, within one allowed
  pattern: the coordinator may subscribe to ``fedmq/<job>/update/+`` but not to
  ``fedmq/<job>/#``, which Mosquitto grants and then filters message by message. A refused
  filter gets SUBACK 0x80. Every message is checked again on delivery (``receive-acl``).
- amqtt acts on a CONNECT's client id before it checks the password: a login with another
  client's id, even a refused one (wrong password, another account), disconnects that client
  if it is connected (take-over), and disturbs its persistent session: a clean-session login
  discards it, any other loses messages published to it meanwhile. It cannot read or publish
  anything. The broker listens on 127.0.0.1 only.
- messages queued for an offline persistent session reach it with the retain flag set.

Restarts (``restart()``, or ``kill()`` then ``start()``): with ``persistence``, retained
messages (model, control, statuses) are written to ``<dir>/retained/`` as they change and
are back after a restart (a ``kill()`` right after a publish may lose that last change).
Sessions, subscriptions and QoS 1 messages queued for offline clients live in memory only
and are lost by any restart, with or without ``persistence`` (Mosquitto keeps them): clients
subscribe again when they reconnect, and the coordinator republishes its retained state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action
from amqtt.plugins.authentication import FileAuthPlugin
from amqtt.plugins.base import BasePlugin
from amqtt.plugins.topic_checking import TopicAccessControlListPlugin
from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher

from broker.config import COORDINATOR, MONITOR, OPERATOR, render_acl
from broker.errors import BrokerError
from broker.passwords import new_password, read_password_file, write_password_file
from broker.process import BrokerProcess
from broker.provision import check_account_name

ROOT = Path(__file__).resolve().parents[1]
# Passwords are random 192-bit tokens, not words: the hash only has to be one-way, and cheap
# to check in the broker's event loop (pwdlib's defaults take about a second a login here).
HASHER = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
ACL_KINDS = ("publish-acl", "subscribe-acl", "receive-acl")
Rules = dict[str, dict[str, list[str]]]  # ACL kind -> account -> allowed topic patterns
ACCESS = {  # Mosquitto's access words -> amqtt's tables
    "read": ("subscribe-acl", "receive-acl"),
    "write": ("publish-acl",),
    "readwrite": ("subscribe-acl", "receive-acl", "publish-acl"),
}


def access_rules(prefix: str, accounts: list[str]) -> Rules:
    """render_acl's rules for each account, in the form of amqtt's topic ACL plugin."""
    users: dict[str, list[tuple[str, str]]] = {}
    patterns: list[tuple[str, str]] = []
    user: str | None = None
    for line in render_acl(prefix).splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user" and len(words) == 2:
            user = words[1]
            users.setdefault(user, [])
            continue
        kind, *rest = words
        access, topic = rest if len(rest) == 2 else ("readwrite", rest[0] if rest else "")
        if (
            not topic
            or len(rest) > 2
            or access not in ACCESS
            or "%c" in topic
            or kind not in ("topic", "pattern")
            or (kind == "topic" and user is None)
        ):
            raise BrokerError(f"ACL line not understood by the embedded broker: {line!r}")
        if kind == "pattern":
            patterns.append((access, topic))
        else:
            users[str(user)].append((access, topic))
    rules: Rules = {kind: {} for kind in ACL_KINDS}
    for account in sorted(accounts):
        granted = users.get(account, []) + [(a, t.replace("%u", account)) for a, t in patterns]
        for kind in ACL_KINDS:
            allowed = (topic for access, topic in granted if kind in ACCESS[access])
            rules[kind][account] = list(dict.fromkeys(allowed))  # in order, once each
    return rules


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Changes whenever the file is replaced (files here are written by atomic rename)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _write_atomically(path: Path, text: str, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as handle:
        handle.write(text)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


# --- the child: amqtt with fedmq's plugins ---------------------------------------------------


class _RulesFile:
    """The ACL file, read again whenever provisioning has replaced it."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._rules: Rules = {}

    def rules(self) -> Rules:
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._rules = json.loads(self.path.read_text()) if stamp else {}
            self._stamp = stamp
        return self._rules

    def allows(self, kind: str, username: str, topic: str) -> bool:
        allowed = self.rules().get(kind, {}).get(username, [])
        return any(TopicAccessControlListPlugin.topic_ac(topic, pattern) for pattern in allowed)


class PasswordFileAuth(FileAuthPlugin):  # type: ignore[misc]
    """amqtt's password file login, plus: the file is read again when it changes, a will must
    be on a topic the account may publish to, a client id stays with its first account."""

    @dataclass
    class Config:
        password_file: str
        acl_file: str

    def __init__(self, context: Any) -> None:
        self._stamp = _stamp(Path(context.config.password_file))  # before super() reads it
        super().__init__(context)
        self._rules = _RulesFile(context.config.acl_file)
        self._owners: dict[str, str] = {}

    async def authenticate(self, *, session: Any) -> bool:
        stamp = _stamp(Path(self.config.password_file))
        if stamp != self._stamp:
            self._users: dict[str, str] = {}
            self._read_password_file()
            self._stamp = stamp
        if not await super().authenticate(session=session):  # None (no username) is a no
            return False
        username: str = session.username
        if session.will_flag and not self._rules.allows(
            "publish-acl", username, session.will_topic or ""
        ):
            self.context.logger.warning(f"{username}: will on {session.will_topic} refused")
            return False
        owner = self._owners.setdefault(session.client_id, username)
        if owner != username:
            self.context.logger.warning(f"{username}: client id {session.client_id} is {owner}'s")
            return False
        return True


class AccessRules(TopicAccessControlListPlugin):  # type: ignore[misc]
    """amqtt's topic ACL, with its three tables taken from the ACL file (kept current)."""

    @dataclass
    class Config:
        acl_file: str

    def __init__(self, context: Any) -> None:
        self._rules = _RulesFile(context.config.acl_file)
        super().__init__(context)

    def _get_config_option(self, option_name: str, default: Any = None) -> Any:
        if option_name in ACL_KINDS:
            return self._rules.rules().get(option_name, {})  # no entry for an account: denied
        return default

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if not self._rules.rules().get("publish-acl"):  # amqtt would allow every publish
            return False
        return bool(await super().topic_filtering(session=session, topic=topic, action=action))


class RetainedStore(BasePlugin):  # type: ignore[misc]
    """Retained messages in files, one per topic: written as they change, loaded at start."""

    @dataclass
    class Config:
        directory: str

    def _file(self, topic: str) -> Path:
        name = hashlib.sha256(topic.encode()).hexdigest()
        return Path(self.config.directory) / f"{name}.msg"

    async def on_broker_pre_start(self) -> None:
        directory = Path(self.config.directory)
        directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(directory.glob("*.msg")):
            header, _, data = path.read_bytes().partition(b"\n")
            topic, qos = json.loads(header)
            retained = RetainedApplicationMessage(None, topic, data, qos)
            self.context.retained_messages[topic] = retained

    async def on_broker_retained_message(
        self, *, client_id: str | None, retained_message: Any
    ) -> None:
        retained = retained_message
        path = self._file(retained.topic)
        if not retained.data:  # an empty retained message clears the topic
            path.unlink(missing_ok=True)
            return
        temporary = path.with_suffix(".tmp")
        header = json.dumps([retained.topic, retained.qos or 0]).encode()
        temporary.write_bytes(header + b"\n" + bytes(retained.data))
        os.replace(temporary, path)


class _Broker(Broker):  # type: ignore[misc]
    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        """amqtt 0.12.1 calls this at every CONNECT for every filter held by anyone, and
        sends unchecked: here only for the session's own filters, only what it may receive."""
        topic_filter, qos = subscription
        holders = self._subscriptions.get(topic_filter, [])
        handler = self._get_handler(session)
        if handler is None or all(held.client_id != session.client_id for held, _ in holders):
            return
        sends = [
            handler.mqtt_publish(topic, retained.data, min(qos, retained.qos or qos), retain=True)
            for topic, retained in list(self._retained_messages.items())
            if self._matches(topic, topic_filter)
            and await self._topic_filtering(session, topic, Action.RECEIVE)
        ]
        await asyncio.gather(*sends, return_exceptions=True)


async def _serve(config: dict[str, Any], ready: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    broker = _Broker(config)
    await broker.start()
    if ready is not None:
        ready.write_text(f"{os.getpid()}\n")
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m broker.embedded", description="Run fedmq's embedded amqtt broker."
    )
    parser.add_argument("--config", type=Path, required=True, help="amqtt.json (EmbeddedBroker)")
    parser.add_argument("--ready", type=Path, help="file to write once listening")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)  # every state change
    asyncio.run(_serve(json.loads(arguments.config.read_text()), arguments.ready))
    return 0


# --- the parent: the same interface as DevBroker ----------------------------------------------


class EmbeddedBroker(BrokerProcess):
    """A private amqtt broker; provision accounts on it."""

    kind = "amqtt"

    def __init__(
        self,
        directory: Path,
        *,
        port: int = 0,
        prefix: str = "fedmq",
        persistence: bool = True,
        max_packet_size: int = 64 * 1024 * 1024,
    ) -> None:
        super().__init__(directory, port=port, prefix=prefix)
        self.persistence = persistence
        self.max_packet_size = max_packet_size  # not enforced: amqtt has no such limit
        self.password_file = self.directory / "amqtt.passwd"  # argon2, unlike Mosquitto's
        self.acl_file = self.directory / "amqtt-acl.json"
        self.config_file = self.directory / "amqtt.json"
        self.log_file = self.directory / "amqtt.log"
        self._ready_file = self.directory / "amqtt.ready"
        self._write_files()

    # --- accounts ------------------------------------------------------------------------

    def provision(self, name: str) -> str:
        """Create (or keep) an account; returns its password. Takes effect on a running
        broker at once (the child reads the password and ACL files again when they change)."""
        check_account_name(name)
        known = self.credentials()
        if name not in known:
            known[name] = new_password()
            self._remember(known)
        password = known[name]
        hashes = read_password_file(self.password_file)
        with contextlib.suppress(UnknownHashError):  # e.g. not an argon2 hash: replace it
            if name in hashes and HASHER.verify(password, hashes[name]):
                return password
        hashes[name] = HASHER.hash(password)
        write_password_file(self.password_file, hashes)
        self._write_acl(list(hashes))
        return password

    def _write_acl(self, accounts: list[str]) -> None:
        rules = json.dumps(access_rules(self.prefix, accounts), indent=2)
        if not self.acl_file.exists() or self.acl_file.read_text() != rules:
            _write_atomically(self.acl_file, rules, 0o640)

    # --- lifecycle -----------------------------------------------------------------------

    def _write_files(self) -> None:
        plugins: dict[str, dict[str, str]] = {
            "broker.embedded.PasswordFileAuth": {
                "password_file": str(self.password_file),
                "acl_file": str(self.acl_file),
            },
            "broker.embedded.AccessRules": {"acl_file": str(self.acl_file)},
        }
        if self.persistence:
            plugins["broker.embedded.RetainedStore"] = {
                "directory": str(self.directory / "retained")
            }
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": plugins,
        }
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")
        for account in (COORDINATOR, MONITOR, OPERATOR):
            self.provision(account)
        self._write_acl(list(read_password_file(self.password_file)))  # e.g. a new prefix

    def _launch(self) -> subprocess.Popen[bytes]:
        path = os.environ.get("PYTHONPATH")
        environment = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
        }
        self._ready_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "broker.embedded", "--config", str(self.config_file)]
        with open(self.log_file, "ab") as log:  # the child keeps its own copy
            return subprocess.Popen(
                [*command, "--ready", str(self._ready_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )

    def _listening(self) -> bool:
        # the child writes this file once listening (a port probe would be logged as an
        # error, and could reach another process on that port)
        return self._ready_file.exists()

    def _log_tail(self, lines: int = 8) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no log)"


if __name__ == "__main__":
    sys.exit(main())
