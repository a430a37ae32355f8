"""Read the records of an offline W&B run (``run-<id>.wandb``) for tests.

wandb 0.31 writes and reads this file in its Go core and ships no Python reader, so this is a
small one. The format is LevelDB's log format (github.com/google/leveldb doc/log_format.md) after
a 7-byte file header (``:W&B``, magic 0xBEE1, version): 32 KiB blocks of chunks, each chunk a
7-byte header (crc32 uint32, length uint16, type uint8: 1 full, 2 first, 3 middle, 4 last) and
its bytes; a block's tail shorter than a chunk header is zero padding. Each whole record is a
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
CHUNK_HEADER = 7
FILE_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    """Every record of the file, in order, as ``Record`` protobuf messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    out, pos, pending = [], FILE_HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if length == 0 and kind == 0:  # zero padding at the end of a block
            pos += left_in_block
            continue
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def history(path: Path) -> list[dict[str, Any]]:
    """The ``history`` records (one per committed ``wandb.log`` step) as dicts of JSON values."""
    return [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records(path)
        if r.WhichOneof("record_type") == "history"
    ]


def metric_definitions(path: Path) -> list[Any]:
    """The ``define_metric`` records (``MetricRecord`` messages)."""
    return [r.metric for r in records(path) if r.WhichOneof("record_type") == "metric"]
