#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into seeds/<target>/ (run it from
anywhere; it rewrites the files in place). The seeds are committed; this
script only documents how they were made and makes new ones easy to add."""

import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example key


def upgrade(extra="", host="localhost:8888", target="/soc", version="13", key=KEY):
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: {version}\r\n{extra}\r\n"
    ).encode()


HTTP_HEAD = {
    "get_root": b"GET / HTTP/1.1\r\nHost: localhost:8888\r\nAccept: text/html\r\n\r\n",
    "head_file": b"HEAD /chat.js?v=2 HTTP/1.1\r\nHost: h\r\n\r\n",
    "pipelined": b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /chat.css HTTP/1.1\r\nHost: h\r\n"
    b"If-None-Match: \"x\"\r\n\r\nHEAD /nope HTTP/1.0\r\n\r\n",
    "not_modified": b"GET /chat.css HTTP/1.1\r\nHost: h\r\nIf-None-Match: W/\"a\", *\r\n\r\n",
    "http10_keep_alive": b"GET /favicon.svg HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: h\nConnection: close\n\n",
    "upgrade": upgrade("Origin: http://localhost:8888\r\n"),
    "upgrade_frames_after": upgrade() + b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x4d\x58",
    "upgrade_lowercase": (
        "GET /soc?since=3 HTTP/1.1\r\nhost: h:1\r\nupgrade: WebSocket\r\n"
        f"connection: keep-alive, UPGRADE\r\nsec-websocket-key: {KEY}\r\n"
        "sec-websocket-version: 13\r\norigin: https://chat.example/\r\n\r\n"
    ).encode(),
    "upgrade_bad_origin": upgrade("Origin: http://evil.example\r\n"),
    "upgrade_other_route": upgrade(target="/echo"),
    "room_page": b"GET /r/rust HTTP/1.1\r\nHost: h\r\n\r\n",
    # The metrics listener's paths (the target's site has them).
    "probes": b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\nHEAD /healthz HTTP/1.0\r\n\r\n"
    b"GET /readyz?x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    "upgrade_bad_version": upgrade(version="8"),
    "upgrade_bad_key": upgrade(key="dGhlIHNhbXBsZSBub25jZR=="),
    "upgrade_no_connection": upgrade().replace(b"Connection: Upgrade\r\n", b""),
    "bad_http_version": b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    "no_host": b"GET / HTTP/1.1\r\n\r\n",
    "post_body": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    "chunked": b"POST /soc HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two_lengths": b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\ncontent-length: 0\r\n\r\n",
    "delete": b"DELETE /soc HTTP/1.1\r\nHost: h\r\n\r\n",
    "too_many_headers": b"GET / HTTP/1.1\r\nHost: h\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(65))
    + b"\r\n",
    # Complete, but over the 8 KiB limit: 431 (the only big seed).
    "oversized": b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 8200 + b"\r\n\r\n",
    "garbage": b"\x00\xffGET /\r\n\r\n\x16\x03\x01",
}

MASK = b"\x37\xfa\x21\x3d"


def frame(opcode, payload=b"", fin=True, mask=MASK, rsv=0):
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(s, **kw):
    return frame(0x1, s.encode() if isinstance(s, str) else s, **kw)


def close(code=1000, reason=b""):
    return frame(0x8, struct.pack(">H", code) + reason)


def header(end=0, max_message=6, read_buffer=2, refuse=False, close_after=0,
           chunks=(0, 0, 0), rooms=(255, 255), deadlines=0):
    """The connection target's 8-byte header (see its doc comment)."""
    b0 = end | max_message << 2 | read_buffer << 5 | (0x83 if refuse else 0)
    return bytes([b0, close_after, *chunks, *rooms, deadlines])


UP = upgrade()
CONNECTION = {
    "chat": header() + UP + text("hello") + frame(0x9, b"p") + text("again") + close(),
    "fragmented": header(chunks=(7, 1, 30))
    + UP
    + text("hel", fin=False)
    + frame(0x9, b"mid")
    + frame(0x0, b"lo")
    + frame(0x2, b"\x00\x01\x02")
    + close(1001, b"bye"),
    "slow_reader": header(chunks=(3, 17, 64), rooms=(0, 5), deadlines=0x40)
    + UP
    + b"".join(text("message %d" % i) for i in range(12)),
    "pipelined_then_upgrade": header(end=1, chunks=(20, 0, 0))
    + b"GET / HTTP/1.1\r\nHost: h\r\n\r\nHEAD /chat.js HTTP/1.1\r\nHost: h\r\n\r\n"
    + UP
    + text("after the 101"),
    "too_big": header(end=2, max_message=0) + UP + text("x" * 40),
    "extended_length": header() + UP + text("y" * 300) + frame(0xA, b"pong"),
    "handler_closes": header(close_after=2) + UP + text("1") + text("2") + text("3"),
    "refused": header(refuse=True) + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    "bad_utf8": header() + UP + text(b"\xff\xfe") + text("unread"),
    "unmasked": header() + UP + frame(0x1, b"plain", mask=None),
    "reserved_bits": header(deadlines=0xff) + UP + text("x", rsv=0x40),
    "probes_pipelined": header(end=1, chunks=(13, 0, 0))
    + b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\nHEAD /readyz HTTP/1.1\r\nHost: h\r\n\r\n"
    + b"GET /healthz HTTP/1.0\r\n\r\n",
    "keep_alive_split": header(end=2, chunks=(5, 9, 2), rooms=(1, 255))
    + b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /nope HTTP/1.1\r\nHost: h\r\n\r\n",
    "garbage": header(chunks=(1, 2, 3)) + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\r\n" * 3,
    # The target's handler refuses a target with a "!" in it, as the chat
    # refuses a malformed resume: a 400 instead of the 101, frames after it
    # never read as HTTP.
    "handshake_refused": header(chunks=(11, 0, 0))
    + upgrade(target="/soc?since=!&epoch=e")
    + text("never read"),
    "handshake_with_query": header() + upgrade(target="/soc?since=3&epoch=q3k9x2aa81") + text("resumed"),
    "handshake_into_a_room": header()
    + upgrade(target="/soc?room=Rust&name=al&resume=7.0123456789abcdef")
    + text("/nick bob")
    + text("/me waves"),
}


def record(seq, payload):
    """One record of a room's log (src/log.rs): len, crc32 of seq and
    payload, seq, payload; little-endian."""
    body = struct.pack("<Q", seq) + payload
    return struct.pack("<II", len(payload), zlib.crc32(body)) + body


LINE = b'{"type":"user","id":7,"message":"hi","seq":%d,"ts":1764504000000}'
LOG_RECORD = {
    "one": record(1, LINE % 1),
    "three": b"".join(record(s, LINE % s) for s in (41, 42, 43)),
    "empty_payload": record(5, b""),
    "torn": (record(1, LINE % 1) + record(2, LINE % 2))[:-7],
    "bad_crc": record(1, LINE % 1)[:-1] + b"?",
    "too_long": struct.pack("<IIQ", (16 << 20) + 1, 0, 1) + b"x" * 8,
    "zeros_after": record(9, LINE % 9) + b"\0" * 64,
}


def bulk(b):
    b = b if isinstance(b, bytes) else b.encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


def array(*items):
    return b"*%d\r\n" % len(items) + b"".join(items)


def entry(seq, text):
    stored = b'{"id":7,"text":"%s","ts":1764504000000}' % text
    return array(bulk(b"0-%d" % seq), array(bulk("d"), bulk(stored)))


# Redis replies for fuzz_targets/redis_reply.rs: before each frame, a byte
# saying what it answers (its value mod 5: sync, fill, append, writer, push;
# divided by 5, mod 2: which room).
SYNC, FILL, APPEND, WRITER, PUSH = range(5)
EPOCH = b"abcdefghjkmnpqrs"
SYNCED = array(
    bulk(EPOCH), bulk("3"), bulk(""), array(entry(2, b"two"), entry(3, b"three")),
    array(bulk("otherserver00001 9 ann"), bulk("otherserver00001 10 ")),
)
def live(seq, text):
    return array(bulk("smessage"), bulk("eddy:{lobby}:live"),
                 bulk(EPOCH + b" %d " % seq + b'{"id":7,"text":"%s","ts":1}' % text))
REDIS_REPLY = {
    "sync": bytes([SYNC]) + SYNCED,
    "sync_then_live": bytes([SYNC]) + SYNCED + bytes([PUSH]) + live(4, b"four")
    + bytes([PUSH]) + live(6, b"six") + bytes([FILL]) + array(entry(5, b"five")),
    "subscribed": bytes([PUSH]) + array(bulk("ssubscribe"), bulk("eddy:{lobby}:live"), b":1\r\n"),
    "presence": bytes([SYNC]) + SYNCED + bytes([PUSH]) + array(
        bulk("smessage"), bulk("eddy:{lobby}:live"), bulk("P join otherserver00002 11 bob")),
    "append_ok": bytes([APPEND]) + array(bulk("ok"), b":4\r\n"),
    "append_stale": bytes([APPEND]) + array(bulk("stale")),
    "noscript": bytes([APPEND]) + b"-NOSCRIPT No matching script.\r\n",
    "writer": bytes([WRITER]) + b":3\r\n" + bytes([WRITER]) + b"$-1\r\n",
    "new_epoch": bytes([SYNC]) + SYNCED + bytes([SYNC]) + array(
        bulk("zyxwvtsrqpnmkjhg"), bulk("1"), bulk("abcdefghjkmnpqrs:1 "), array(), array()),
    "other_room": bytes([SYNC + 5]) + SYNCED,
}


def write(target, seeds):
    directory = os.path.join(HERE, target)
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


write("http_head", HTTP_HEAD)
write("connection", CONNECTION)
write("log_record", LOG_RECORD)
write("redis_reply", REDIS_REPLY)
