"""Reads topics as a `read_committed` consumer of another client (aiokafka) would.

Usage: read_committed.py BOOTSTRAP SECONDS N TOPIC...
Reads every TOPIC from its earliest offset with isolation_level=read_committed until N records
arrived in all, then one more second to catch any beyond N, and prints one line per record:
topic, a tab, the value. Exits 1 if fewer than N arrive within SECONDS.
"""

import asyncio
import sys

from aiokafka import AIOKafkaConsumer


async def main(bootstrap: str, seconds: float, n: int, topics: list) -> None:
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        check_crcs=True,
    )
    await consumer.start()
    got = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        settle = None
        while loop.time() < deadline and (settle is None or loop.time() < settle):
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                got.extend(records)
            if settle is None and len(got) >= n:
                settle = loop.time() + 1.0
    finally:
        await consumer.stop()
    for r in got:
        print(f"{r.topic}\t{r.value.decode()}", flush=True)
    if len(got) < n:
        print(f"only {len(got)} of {n} records", file=sys.stderr)
        sys.exit(1)


asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
