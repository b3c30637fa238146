"""Produces N records with each compression codec, as another client's producer would.

Usage: produce_compressed.py BOOTSTRAP TOPIC_PREFIX N
Writes "<codec>-<i>" to the topic TOPIC_PREFIX + "codec-" + codec, for gzip, snappy, lz4, zstd.
"""

import asyncio
import sys

from aiokafka import AIOKafkaProducer


async def main(bootstrap: str, prefix: str, n: int) -> None:
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, compression_type=codec, linger_ms=20
        )
        await producer.start()
        try:
            sends = [
                await producer.send(f"{prefix}codec-{codec}", f"{codec}-{i}".encode())
                for i in range(n)
            ]
            await asyncio.gather(*sends)
        finally:
            await producer.stop()
        print(f"sent {n} with {codec}", flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
