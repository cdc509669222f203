"""An in-memory `Transport` for tests: a documented test double, not a broker.

It records what the publisher hands over and lets a test play the broker's part by hand: accept or refuse
a connection, drop it, acknowledge a message id (early, late, twice, or never), deliver a command. Message
ids count 1..65535 and wrap, like MQTT's, so id reuse can be exercised. Nothing happens on its own, so
the outbox's acknowledgement bookkeeping can be tested fast and deterministically.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from pi.messaging.transport import Transport, guarded


@dataclass
class Handed:
    mid: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class FakeTransport(Transport):
    def __init__(self, first_mid: int = 1, auto_accept: bool = False):
        self.auto_accept = auto_accept  # connect() succeeds at once (for tests of what sits above)
        self.handed: list[Handed] = []  # data messages, in the order handed over
        self.statuses: list[bytes] = []  # retained status payloads published directly
        self.status_mids: list[int] = []  # their message ids (one counter for all messages, as in paho)
        self.wills: list[bytes] = []  # the will of every connection attempt, oldest first
        self.subscriptions: list[list[str]] = []
        self.connected = False
        self.dead = False  # set by a test: the "network thread" has died
        self.refuse_publish = False
        self.ack_inside_publish = False  # acknowledge before publish() even returns (a fast broker)
        self._next_mid = first_mid
        self._lock = threading.Lock()

    # -- the Transport interface --------------------------------------------------------------------
    def connect(self) -> None:
        """Does nothing by itself (a test calls accept()), unless auto_accept."""
        if self.auto_accept:
            self.accept()

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        if self.refuse_publish:
            return None
        with self._lock:
            mid = self._take_mid()
            self.handed.append(Handed(mid, topic, bytes(payload), qos, retain))
        if self.ack_inside_publish and qos:
            self.ack(mid)
        return mid

    def publish_status(self, topic: str, payload: bytes, wait_s: float = 0.0) -> None:
        with self._lock:
            self.status_mids.append(self._take_mid())
            self.statuses.append(bytes(payload))

    def _take_mid(self) -> int:
        mid = self._next_mid
        self._next_mid = mid % 65535 + 1
        return mid

    def subscribe(self, topics: list[str]) -> None:
        self.subscriptions.append(list(topics))
        guarded("subscribe", self.listener.on_subscribed)()

    def disconnect(self) -> None:
        self.connected = False

    def alive(self) -> bool:
        return not self.dead

    # -- the broker's part, played by a test --------------------------------------------------------
    def accept(self) -> None:
        """A connection attempt that the broker accepts (the will is taken first, as a CONNECT would)."""
        self.wills.append(self.listener.will()[1])
        self.connected = True
        guarded("connect", self.listener.on_connected)()

    def drop(self) -> None:
        """The connection is lost (the broker would now publish the last will)."""
        self.connected = False
        guarded("disconnect", self.listener.on_disconnected)("connection lost")

    def ack(self, mid: int) -> None:
        """A PUBACK for `mid`; exceptions are contained as a real transport's network thread would."""
        guarded("acknowledgement", self.listener.on_acked)(mid)

    def deliver(self, topic: str, payload: bytes) -> None:
        guarded("message", self.listener.on_message)(topic, payload)
