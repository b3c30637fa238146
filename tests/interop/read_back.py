"""Reads what the service produced with an independent client (aiokafka, CRCs checked).

Usage: read_back.py BOOTSTRAP TOPIC N
Reads N records of TOPIC from the earliest offset and prints one JSON line per record (key,
value, headers, timestamp, partition, offset), in partition then offset order; exits 1 if fewer
than N arrive within 30 s.
"""

import asyncio
import json
import sys

from aiokafka import AIOKafkaConsumer


def text(b):
    return None if b is None else b.decode()


async def main(bootstrap: str, topic: str, n: int) -> None:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", check_crcs=True
    )
    await consumer.start()
    got = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(got) < n and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                got.extend(records)
    finally:
        await consumer.stop()
    got.sort(key=lambda r: (r.partition, r.offset))
    for r in got:
        line = {
            "partition": r.partition,
            "offset": r.offset,
            "key": text(r.key),
            "value": text(r.value),
            "headers": [[k, text(v)] for k, v in r.headers],
            "timestamp": r.timestamp,
        }
        print(json.dumps(line), flush=True)
    if len(got) < n:
        print(f"only {len(got)} of {n} records", file=sys.stderr)
        sys.exit(1)


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
