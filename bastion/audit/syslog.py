"""Forwards audit events to syslog: RFC 5424 messages, octet-counted over TCP (RFC 6587), optionally TLS (RFC 5425).

The forwarder is an AuditLog listener: `submit` formats the committed event and puts it in a bounded
queue, in O(1) and without ever raising, so `emit` is never slowed by the receiver.  One task
connects, sends in order, and reconnects with backoff; a message is taken off the queue only once it
has been written.  When the queue is full new events are dropped and counted, and the receiver is
told how many once it is reachable again.  The database stays the record; syslog is a copy (and a
place the chain head is anchored outside the database).  TCP syslog cannot confirm delivery: what
sits in the kernel's buffers when a connection breaks is lost, as RFC 6587 notes.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import logging
import os
import ssl
from typing import Any

from bastion.audit.export import event_dict
from bastion.config import parse_host_port

log = logging.getLogger("bastion.audit.syslog")

FACILITY = 13  # "log audit" (RFC 5424, table 1)
SD_ID = "bastion@32473"  # 32473 is the documentation enterprise number (RFC 5612)
APP_NAME = "bastion"
BOM = b"\xef\xbb\xbf"  # RFC 5424: a UTF-8 MSG starts with the BOM
QUEUE_SIZE = 10_000
BATCH = 256
IDLE_CHECK = 30.0

_ERROR_TYPES = ("hostkey.mismatch", "recording.failure")
_BAD_OUTCOMES = ("failure", "denied", "refused", "locked")


def _header_field(value: str, limit: int) -> str:
    """PRINTUSASCII only (RFC 5424 header fields), '-' when empty."""
    text = "".join(c if 33 <= ord(c) <= 126 else "_" for c in str(value))[:limit]
    return text or "-"


def _sd_value(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    return "".join(c if c.isprintable() else " " for c in text)


def syslog_severity(event_type: str, outcome: str) -> int:
    if event_type in _ERROR_TYPES:
        return 3  # error
    if outcome in _BAD_OUTCOMES:
        return 4  # warning
    if event_type.startswith(("admin.", "backup.", "recording.shredded")):
        return 5  # notice
    return 6  # informational


def _timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_message(msgid: str, when: dt.datetime, params: dict[str, Any], body: dict[str, Any], *,
                   hostname: str, severity: int, procid: int | None = None) -> bytes:
    """One RFC 5424 message: header, one structured-data element, and the JSON body as MSG."""
    pri = FACILITY * 8 + severity
    header = " ".join(["<%d>1" % pri, _timestamp(when), _header_field(hostname, 255), APP_NAME,
                       _header_field(str(procid if procid is not None else os.getpid()), 128),
                       _header_field(msgid, 32)])
    sd = "[" + SD_ID + "".join(f' {name}="{_sd_value(value)}"' for name, value in params.items()) + "]"
    msg = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return f"{header} {sd} ".encode() + BOM + msg


def format_event(row: Any, hostname: str) -> bytes:
    event = event_dict(row)
    params = {"seq": event["seq"], "hash": event["hash"], "outcome": event["outcome"], "actor": event["actor"],
              "target": event["target"], "session": event["session_id"]}
    return format_message(event["type"], row.ts, params, event, hostname=hostname,
                          severity=syslog_severity(event["type"], event["outcome"]))


def frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: MSG-LEN SP SYSLOG-MSG."""
    return b"%d " % len(message) + message


class SyslogForwarder:
    """Bounded queue, one sender task, reconnect with backoff, drop-with-counter on overflow."""

    def __init__(self, host: str, port: int, *, tls: bool = False, ssl_context: ssl.SSLContext | None = None,
                 hostname: str = "-", queue_size: int = QUEUE_SIZE, connect_timeout: float = 10.0,
                 write_timeout: float = 10.0, max_backoff: float = 30.0):
        self.host, self.port, self.hostname = host, port, hostname
        self.tls = tls or ssl_context is not None
        self._ssl_context = ssl_context
        self._limit = queue_size
        self._queue: collections.deque[bytes] = collections.deque()
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._max_backoff = max_backoff
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.dropped = 0
        self.connects = 0
        self._dropped_reported = 0
        self.connected = False

    @classmethod
    def from_config(cls, config: Any, ssl_context: ssl.SSLContext | None = None,
                    **options: Any) -> "SyslogForwarder | None":
        """A forwarder for `audit.syslog` (None when it is empty); TLS trusts the system CAs (or SSL_CERT_FILE)."""
        if not config["audit.syslog"]:
            return None
        host, port = parse_host_port(config["audit.syslog"])
        return cls(host, port, tls=config["audit.syslog_tls"], ssl_context=ssl_context, hostname=config.node_name,
                   **options)

    def attach(self, audit: Any) -> None:
        """Register as a listener of an AuditLog (called with each committed event)."""
        listeners = getattr(audit, "listeners", None)
        if listeners is None:
            listeners = audit._listeners  # AuditLog keeps its listeners in this list
        listeners.append(self.submit)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="bastion-syslog")

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, row: Any) -> None:
        """The AuditLog listener: never blocks, never raises."""
        try:
            self._enqueue_threadsafe(format_event(row, self.hostname))
        except Exception as exc:  # a listener that raised would fail emit() after its commit
            self.dropped += 1
            log.error("audit event not queued for syslog: %s", type(exc).__name__)

    def submit_anchor(self, anchor: dict[str, Any]) -> None:
        """Send the audit chain head, so that it is anchored at the receiver too."""
        try:
            when = dt.datetime.fromisoformat(anchor["at"])
            message = format_message("audit.anchor", when, {"seq": anchor["seq"], "hash": anchor["hash"]}, anchor,
                                     hostname=self.hostname, severity=5)
            self._enqueue_threadsafe(message)
        except Exception as exc:
            self.dropped += 1
            log.error("audit anchor not queued for syslog: %s", type(exc).__name__)

    def _enqueue_threadsafe(self, message: bytes) -> None:
        loop = self._loop
        if loop is None:
            self._enqueue(message)  # not started yet: queue it for when it is
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._enqueue(message)
        else:
            loop.call_soon_threadsafe(self._enqueue, message)

    def _enqueue(self, message: bytes) -> None:
        if len(self._queue) >= self._limit:
            self.dropped += 1
            if self.dropped - self._dropped_reported == 1:
                log.warning("syslog queue full (%d events): new audit events are not forwarded until the "
                            "receiver catches up (they stay in the database)", self._limit)
            return
        self._queue.append(message)
        if self._wakeup is not None:
            self._wakeup.set()

    async def stop(self, timeout: float = 5.0) -> None:
        """Give the queue up to `timeout` seconds to drain, then stop the sender."""
        if self._task is None:
            return
        deadline = asyncio.get_running_loop().time() + timeout
        while self._queue and self.connected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # we were cancelled too, not only the sender
                raise
        self._task = None
        if self._queue:
            log.warning("%d audit events not forwarded to syslog at shutdown (they stay in the database)",
                        len(self._queue))

    def _context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
            self._ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        return self._ssl_context

    async def _run(self) -> None:
        assert self._wakeup is not None
        backoff, failing = 0.25, False
        while True:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    context = self._context()
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port, ssl=context, server_hostname=self.host if context else None)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                # Once per outage, not once per retry.
                (log.debug if failing else log.warning)("syslog receiver %s:%d unreachable (%s); retrying",
                                                        self.host, self.port, type(exc).__name__)
                failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            self.connects += 1
            self.connected = True
            backoff, failing = 0.25, False
            closed = asyncio.create_task(self._watch(reader))
            try:
                await self._send(writer, closed)
            except Exception as exc:  # any failure of this connection: reconnect (CancelledError ends the task)
                log.warning("syslog connection to %s:%d lost (%s); reconnecting", self.host, self.port,
                            type(exc).__name__)
                await asyncio.sleep(backoff)
            finally:
                self.connected = False
                closed.cancel()
                writer.transport.abort()

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        # A receiver sends nothing; end of stream means it closed the connection.
        try:
            while await reader.read(4096):
                pass
        except OSError:
            pass

    async def _send(self, writer: asyncio.StreamWriter, closed: asyncio.Task[None]) -> None:
        assert self._wakeup is not None
        while True:
            if closed.done():
                raise ConnectionError("the receiver closed the connection")
            if self.dropped > self._dropped_reported:
                count = self.dropped - self._dropped_reported
                notice = format_message("syslog.dropped", dt.datetime.now(dt.timezone.utc), {"dropped": count},
                                        {"dropped": count, "total_dropped": self.dropped},
                                        hostname=self.hostname, severity=4)
                await self._write(writer, [notice])
                self._dropped_reported += count
            if not self._queue:
                self._wakeup.clear()
                waiter = asyncio.ensure_future(self._wakeup.wait())
                try:
                    await asyncio.wait({waiter, closed}, timeout=IDLE_CHECK, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                continue
            batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            await self._write(writer, batch)
            for _ in batch:
                self._queue.popleft()  # only once written: a broken connection keeps them for the next one
            self.sent += len(batch)

    async def _write(self, writer: asyncio.StreamWriter, messages: list[bytes]) -> None:
        writer.write(b"".join(frame(message) for message in messages))
        async with asyncio.timeout(self._write_timeout):
            await writer.drain()
