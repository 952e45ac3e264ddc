#!/usr/bin/env python3
"""Writes a data directory holding one room ("lobby") with about SIZE bytes
of history, as Eddy writes it (src/log.rs, src/datadir.rs): 64 MiB segments
of records [len u32 LE, crc32 u32 LE of seq+payload, seq u64 LE, payload],
a room.json, and a checkpoint at the end (as a clean shutdown leaves it)
unless --no-checkpoint (as a crash long after the last checkpoint).

    benches/disk/make_history.py DIR [SIZE_MIB] [--no-checkpoint]

Then time the startup: eddy --data-dir DIR --history-bytes 4294967296
--addr 127.0.0.1:0 logs "history in DIR: ... opened in T".
"""
import json
import os
import struct
import sys
import zlib

SEGMENT = 64 << 20


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    checkpoint = "--no-checkpoint" not in sys.argv
    root = args[0]
    size = int(args[1]) << 20 if len(args) > 1 else 1 << 30
    room = os.path.join(root, "rooms", "lobby")
    os.makedirs(room, exist_ok=True)
    with open(os.path.join(room, "room.json"), "w") as f:
        json.dump({"room": "lobby", "epoch": "0000000000000000", "earlier": []}, f)
    text = "x" * 120
    seq, written, base, out, chunk = 1, 0, 1, None, []
    while written < size:
        if out is None or out.tell() + sum(map(len, chunk)) >= SEGMENT:
            if out is not None:
                out.write(b"".join(chunk))
                chunk = []
                out.close()
            base = seq
            out = open(os.path.join(room, "%020d.log" % base), "wb")
        payload = ('{"type":"user","id":7,"message":"%s","seq":%d,"ts":1764504000000}'
                   % (text, seq)).encode()
        body = struct.pack("<Q", seq) + payload
        record = struct.pack("<II", len(payload), zlib.crc32(body)) + body
        chunk.append(record)
        written += len(record)
        seq += 1
        if len(chunk) >= 4096:
            out.write(b"".join(chunk))
            chunk = []
    out.write(b"".join(chunk))
    offset = out.tell()
    out.close()
    if checkpoint:
        body = b"eddyckp1" + struct.pack("<QQQ", base, offset, seq - 1)
        with open(os.path.join(room, "checkpoint"), "wb") as f:
            f.write(body + struct.pack("<I", zlib.crc32(body)))
    with open(os.path.join(root, "state.json"), "w") as f:
        json.dump({"clean": checkpoint, "boot_id": ""}, f)
    print("%d lines, %d bytes, last segment %d" % (seq - 1, written, base))


main()
