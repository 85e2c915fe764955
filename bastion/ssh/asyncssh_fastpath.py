"""Per-packet costs in asyncssh that buy the gateway nothing, removed, and its channel window mended.

Profiled on the gateway with 1,000 interactive sessions (py-spy, 2 cores), the first two were 4.7%
and 4.2% of the gateway's CPU for work whose result is thrown away, and the third doubled the
packets the gateway sends:

1. Packet logging. asyncssh formats a description of every packet it sends or receives (handler
   name, a pluralised byte count, the full payload of an `SSHPacket`) and only then asks its logger
   whether packet logging (debug level 3) is on. Here the question is asked first; with debug
   level 3 set, the original runs unchanged.
2. The keepalive timer. asyncssh cancels its keepalive timer and creates a new one on every read
   from the socket. Here a read only moves the deadline forward, and the timer, when it fires early,
   re-arms itself for that deadline; the keepalive then goes out when it would have (the last read
   plus the interval, to uvloop's millisecond). A deadline moved earlier (a shorter interval set
   later) still goes through asyncssh's own cancel-and-set.
3. An empty SSH_MSG_IGNORE before every packet. asyncssh sends one ahead of each packet once
   encryption is on: the countermeasure RFC 4251 section 9.3.1 describes for CBC, where the next
   packet's IV is the last ciphertext block an attacker has seen. With an AEAD cipher (AES-GCM,
   ChaCha20-Poly1305: each packet's nonce comes from its sequence number) there is no such IV, and
   the ignore packet costs an encryption, a socket write and the peer's decryption for each packet
   sent. It is left out for those ciphers only; with any other cipher asyncssh's rule stands.
   OpenSSH sends no such packets, so peers see what they would see from sshd.
4. Copying what is left of a read for every packet. asyncssh keeps received bytes in one `bytes` and
   slices off each packet's header and then its body, copying the rest of the buffer both times; a
   read from uvloop holds up to 256 KiB, eight 32 KiB data packets, so bulk data was copied about
   seven times over (py-spy: the two slices were 32% of the event loop's time during a recorded bulk
   `cat`). Here a large read is handed to asyncssh `RECEIVE_STEP` bytes at a time: the same bytes in
   the same order, as if TCP had split the read, with the buffer never much more than a step (a step
   and what is left of a packet). A connection closed while one piece is parsed gets none of the
   later pieces; asyncssh would have parsed the rest of the read, so this parses less, never more.

5. Window credit for bytes not yet delivered. A paused channel (`pause_reading`) keeps what arrives in
   a buffer, and asyncssh's docs promise that buffer stays within the channel window. But the first
   delivery after a resume credits the peer with the whole window used so far, buffered bytes
   included, so each pause and resume lets the peer send another window on top of what is still
   buffered. The gateway pauses a target's channel many times a second under bulk output (slow client,
   recorder backlog), and a recorded 1 GiB `cat` grew one channel's buffer to 520 MB and the gateway's
   heap by 620 MB. Here bytes the channel keeps are never credited: the peer is credited with what was
   received and is no longer kept, as OpenSSH counts it (and as Apache MINA sshd fixed the same fault,
   its pull request 292). With nothing kept, asyncssh's own trigger stands (credit once over half the
   window is used); while kept bytes are handed over, a credit goes as soon as an eighth of the window
   is owed, so the peer sends again behind the drain instead of waiting for half of it (measured: a
   recorded 1 GiB `cat` at 281-293 MiB/s against 251-272 before the fix, `scp` 326-372 against
   325-361, alternating runs). The session gets kept bytes as asyncssh gives them (decoded for a text
   channel), and may pause and resume the channel from its own callback.

6. A system call for every packet sent. asyncssh hands each packet to the transport on its own, and
   uvloop writes each at once: during a relayed `scp` the write calls were 34% of the event loop's
   time (py-spy). Here the packets one channel flush sends (a window's worth once the peer credits it,
   and whatever the callbacks it runs send on the same connection) go to the transport in one call,
   in order, when the flush ends. They go to the transport the connection had when the flush began:
   a disconnect sent within the flush drops the connection's reference at once and aborts the
   transport on the next turn of the loop, so they are written before that, as each would have been
   written at once before (measured: `scp` 336-373 MiB/s against 306-360, and the OpenSSH client
   spends 10% less CPU per MiB reading fewer, larger pieces; `cat` and 1,000 interactive sessions
   unchanged within their spread, alternating runs).

7. Per-packet set-up in AES-GCM. asyncssh builds a new AESGCM object (its key schedule) for every
   packet, works out the next nonce by slicing and re-joining the IV as bytes, and joins a received
   packet's body to its first block and then to its tag, two copies where one does. Here each direction
   keeps one AESGCM object for its keys (a rekey makes a new cipher, as before) and its invocation
   counter as an integer (RFC 5647: the nonce is the fixed field and the counter, which wraps at 2**64
   as asyncssh's does), and a received packet is joined once. The bytes on the wire are the same, and
   what goes out keeps asyncssh's form (ciphertext and tag apart: asyncssh's private key export writes
   the tag after the length-prefixed ciphertext). During a recorded bulk `cat` asyncssh's IV arithmetic
   alone was 2.4% of the event loop's time (py-spy, the host of 2026-12-07).

8. Three ChaCha20 set-ups per packet in chacha20-poly1305@openssh.com, the cipher a stock OpenSSH
   client picks first (the client's order decides, not the server's). asyncssh keys one ChaCha20 stream
   for the length, one for the Poly1305 key (block 0) and one more for the payload (from block 1), and
   joins the encrypted length and payload to hand them to Poly1305. Here the Poly1305 key and the
   payload come from one stream, as the construction has it (block 0, then block 1 on), and Poly1305
   takes the two pieces in turn. Measured on the host of 2026-12-07: a stock client's recorded bulk `cat`
   cost the gateway 10.0 ms of CPU per MiB before and 9.4 after, against 6.5 with AES-GCM.

All eight patch asyncssh classes, so they hold for every asyncssh connection in the process (gateway
front end, upstream connections, tests' servers); tests/unit/ssh/test_asyncssh_fastpath.py checks
each against asyncssh's rules, the keepalive also on uvloop (the gateway's loop).
"""

from __future__ import annotations

from typing import Any, Callable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.poly1305 import Poly1305

from asyncssh.channel import SSHChannel
from asyncssh.crypto.chacha import ChachaCipher, chacha20
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_CHANNEL_WINDOW_ADJUST, MSG_IGNORE
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import ProtocolError
from asyncssh.packet import SSHPacketLogger, String, UInt32

PACKET_LOG_LEVEL = 3  # asyncssh's debug level at which packets are logged (SSHLogger.packet)
AEAD_ENCRYPTION = (GCMEncryption, ChachaEncryption)  # nonce per sequence number, no chained IV
_EMPTY = String(b"")  # the data of asyncssh's padding ignore packet
# uvloop schedules in whole milliseconds and runs a delay that rounds to 0 at once, as a Handle
# without when(); a re-arm closer than this would spin or leave such a Handle as the timer.
TIMER_RESOLUTION = 0.001

# While a paused channel hands over what it held, the peer is credited each time this share of the window
# has been delivered (OpenSSH credits after three packets; asyncssh after half the window).
DRAIN_CREDIT_SHARE = 8

_GCM_TAG = 16  # bytes of AES-GCM's tag on an SSH packet (RFC 5647)

# Two data packets of the largest size OpenSSH sends (32 KiB of data plus framing) fit a step.
RECEIVE_STEP = 64 * 1024

_INVOCATION_MASK = (1 << 64) - 1  # RFC 5647's invocation counter: 64 bits, wrapping
_CHACHA_BLOCK_0 = bytes(64)  # encrypted from counter 0: the first 32 bytes are the packet's Poly1305 key
# Block counter 0, ahead of the 8-byte nonce in cryptography's 16-byte ChaCha20 nonce (asyncssh's _CTR_0).
_COUNTER_0 = bytes(8)

_installed = False


def _next_nonce(cipher: Any) -> bytes:
    """The nonce for `cipher`'s next packet, moving its invocation counter on."""
    invocation = cipher._bastion_invocation
    cipher._bastion_invocation = (invocation + 1) & _INVOCATION_MASK
    return cipher._bastion_fixed + invocation.to_bytes(8, "big")


def _gcm_open(cipher: Any, header: bytes, sealed: bytes) -> bytes | None:
    """`sealed` (ciphertext and tag) opened with `cipher`'s next nonce, or None if the tag is wrong."""
    try:
        return cipher._bastion_aead.decrypt(_next_nonce(cipher), sealed, header)
    except InvalidTag:
        return None


def _chacha_payload(key: bytes, nonce: bytes, header: bytes) -> tuple[Any, Poly1305]:
    """One packet's ChaCha20 stream, past block 0, and a Poly1305 keyed by block 0 that has read `header`."""
    stream = Cipher(ChaCha20(key, _COUNTER_0 + nonce), mode=None).encryptor()
    mac = Poly1305(stream.update(_CHACHA_BLOCK_0)[:32])
    mac.update(header)
    return stream, mac


def feed_in_steps(parse: Callable[[Any, Any], None], connection: Any, data: bytes) -> None:
    """`parse(connection, piece)` for each RECEIVE_STEP of `data`, while the connection stays open."""
    if len(data) <= RECEIVE_STEP:
        parse(connection, data)
        return
    view = memoryview(data)
    for start in range(0, len(data), RECEIVE_STEP):
        if start and not connection._transport:  # closed by what came before: parse no more of it
            return
        parse(connection, view[start:start + RECEIVE_STEP])


def install() -> None:
    """Patch asyncssh's classes once per process (later calls do nothing)."""
    global _installed
    if _installed:
        return
    original_log_packet = SSHPacketLogger._log_packet
    original_reset = SSHConnection._reset_keepalive_timer
    original_callback = SSHConnection._keepalive_timer_callback
    original_send_packet = SSHConnection.send_packet
    original_data_received = SSHConnection.data_received
    original_flush_recv_buf = SSHChannel._flush_recv_buf
    original_flush_send_buf = SSHChannel._flush_send_buf
    original_send = SSHConnection._send
    original_deliver_data = SSHChannel._deliver_data
    original_gcm_init = GCMCipher.__init__

    def log_packet(self, msg, pkttype, pktid, packet, note) -> None:
        if SSHLogger._debug_level >= PACKET_LOG_LEVEL:
            original_log_packet(self, msg, pkttype, pktid, packet, note)

    def reset_keepalive_timer(self) -> None:
        # uvloop turns a delay under half a millisecond into a plain Handle, which has no when().
        when = getattr(self._keepalive_timer, "when", None)
        if self._auth_complete and when is not None and self._keepalive_interval:
            due = self._loop.time() + self._keepalive_interval
            if due >= when():
                self._bastion_keepalive_due = due
                return
        self._bastion_keepalive_due = 0.0  # asyncssh's own timer is exact again
        original_reset(self)

    def keepalive_timer_callback(self) -> None:
        due = getattr(self, "_bastion_keepalive_due", 0.0)
        if due - self._loop.time() >= TIMER_RESOLUTION:  # a read came after the timer was set: wait
            self._keepalive_timer = self._loop.call_at(due, self._keepalive_timer_callback)
            return
        original_callback(self)  # due now, or within uvloop's millisecond: at most that early

    def send_packet(self, pkttype, *args, handler=None) -> None:
        if pkttype == MSG_IGNORE and args == (_EMPTY,) and type(self._send_encryption) in AEAD_ENCRYPTION:
            return
        original_send_packet(self, pkttype, *args, handler=handler)

    def data_received(self, data, datatype=None) -> None:
        feed_in_steps(original_data_received, self, data)

    def kept_bytes(self) -> int:
        # Between flushes the buffer only grows at its end (or is replaced when the channel is discarded),
        # so only what came after the last flush is summed: a flood of tiny packets costs no more per flush.
        buffer, (counted, length, total) = self._recv_buf, self._bastion_counted
        if counted is not buffer or len(buffer) < length:
            length = total = 0
        return total + sum(len(data) for data, _ in buffer[length:])

    def flush_recv_buf(self, exc=None) -> None:
        # What the channel kept while paused goes to the session, oldest first. Nothing new arrives
        # meanwhile, but the session may pause and resume it from its callback: a flush within this one
        # goes on with this one's count (the same buffer, less the pieces already given).
        buffer = self._recv_buf
        self._bastion_flushes += 1
        if self._bastion_flushes == 1:
            self._bastion_held = kept_bytes(self)
        try:
            original_flush_recv_buf(self, exc)
        finally:
            self._bastion_flushes -= 1
            if self._recv_buf is not buffer:  # discarded under us (the channel closed): count afresh
                self._bastion_held = sum(len(data) for data, _ in self._recv_buf)
            self._bastion_counted = (self._recv_buf, len(self._recv_buf), self._bastion_held)
            if not self._bastion_flushes:
                self._bastion_held = 0

    def deliver_data(self, data, datatype) -> None:
        if not self._bastion_held and not self._recv_buf:  # nothing kept: asyncssh's rule is this one
            original_deliver_data(self, data, datatype)
            return
        if self._bastion_flushes:  # `data` is the oldest kept piece, just taken from the buffer
            self._bastion_held -= len(data)
            held = self._bastion_held
        else:  # new data while bytes stay kept (a session that raised in a flush): rare
            held = sum(len(kept) for kept, _ in self._recv_buf)
        full = self._init_recv_window
        delivered = full - self._recv_window - held  # received, not kept (this piece too), not credited
        if delivered > full / DRAIN_CREDIT_SHARE:
            self.logger.debug2("Sending window adjust of %d bytes, new window %d (%d kept)",
                               delivered, full - held, held)
            self.send_packet(MSG_CHANNEL_WINDOW_ADJUST, UInt32(delivered))
            self._recv_window += delivered
        # The rest of asyncssh's delivery, without its credit (of everything received, kept bytes too).
        if self._encoding:
            try:
                data = self._decoder.decode(data)
            except UnicodeDecodeError as exc:
                raise ProtocolError(str(exc)) from None
        if self._session is not None:
            self._session.data_received(data, datatype)

    def send(self, data) -> None:
        corked = self._bastion_corked
        if corked is None:
            original_send(self, data)
        elif self._transport:  # as asyncssh: nothing goes out once the connection is closing
            corked.append(data)

    def flush_send_buf(self) -> None:
        # The packets one flush sends (a window's worth after the peer's credit, and whatever the
        # callbacks it runs send on this connection) go out in one system call, in order.
        conn = self._conn
        transport = conn._transport
        if conn._bastion_corked is not None or not transport:
            original_flush_send_buf(self)
            return
        conn._bastion_corked = corked = []
        try:
            original_flush_send_buf(self)
        finally:
            conn._bastion_corked = None
            # To the transport as it was: a close under way (asyncssh aborts it on the next loop turn)
            # finds these written, as it would have found each packet written at once.
            if corked:
                try:
                    transport.write(corked[0]) if len(corked) == 1 else transport.writelines(corked)
                except ConnectionError:
                    pass

    def gcm_init(self, cipher_name, key, iv) -> None:
        original_gcm_init(self, cipher_name, key, iv)
        self._bastion_aead = AESGCM(key)  # asyncssh's GCMCipher serves AES-GCM only, with AESGCM
        self._bastion_fixed, self._bastion_invocation = iv[:4], int.from_bytes(iv[4:], "big")

    def gcm_encrypt_and_sign(self, header, data):
        # The tag comes back apart, as asyncssh's API has it: besides the connection (which sends packet +
        # mac), asyncssh's private key export writes the tag after the length-prefixed ciphertext.
        sealed = self._bastion_aead.encrypt(_next_nonce(self), data, header)
        return header + sealed[:-_GCM_TAG], sealed[-_GCM_TAG:]

    def gcm_verify_and_decrypt(self, header, data, mac):
        return _gcm_open(self, header, data + mac)

    def gcm_decrypt_packet(self, seq, first, rest, header_len, mac):
        return _gcm_open(self._cipher, first[:header_len], b"".join((first[header_len:], rest, mac)))

    def chacha_encrypt_and_sign(self, header, data, nonce):
        header = chacha20(self._adkey, header, nonce, 0)
        stream, mac = _chacha_payload(self._key, nonce, header)
        data = stream.update(data)
        mac.update(data)
        return header + data, mac.finalize()

    def chacha_verify_and_decrypt(self, header, data, nonce, tag):
        stream, mac = _chacha_payload(self._key, nonce, header)
        mac.update(data)
        try:
            mac.verify(tag)
        except InvalidSignature:
            return None
        return stream.update(data)

    ChachaCipher.encrypt_and_sign = chacha_encrypt_and_sign
    ChachaCipher.verify_and_decrypt = chacha_verify_and_decrypt
    GCMCipher.__init__ = gcm_init
    GCMCipher.encrypt_and_sign = gcm_encrypt_and_sign  # asyncssh's GCMEncryption.encrypt_packet calls it
    GCMCipher.verify_and_decrypt = gcm_verify_and_decrypt
    GCMEncryption.decrypt_packet = gcm_decrypt_packet
    SSHConnection._bastion_corked = None  # packets held while a channel flushes (a list), or None
    SSHConnection._send = send
    SSHChannel._flush_send_buf = flush_send_buf
    SSHChannel._bastion_flushes = 0  # flushes of kept bytes under way (nested when resumed from a callback)
    SSHChannel._bastion_held = 0  # kept bytes not yet given to the session, counted while a flush runs
    SSHChannel._bastion_counted = (None, 0, 0)  # (buffer, its length, bytes kept) when the last flush ended
    SSHChannel._flush_recv_buf = flush_recv_buf
    SSHChannel._deliver_data = deliver_data
    SSHPacketLogger._log_packet = log_packet
    SSHConnection.data_received = data_received
    SSHConnection.send_packet = send_packet
    SSHConnection._reset_keepalive_timer = reset_keepalive_timer
    SSHConnection._keepalive_timer_callback = keepalive_timer_callback
    _installed = True
