"""Group offsets held in an open transaction, as a transactional producer of another client
(aiokafka) leaves them while it commits: for the test that a new owner waits for them.

Usage: pending_offsets.py BOOTSTRAP TOPIC GROUP OFFSET HOLD_SECONDS
In one transaction, commits OFFSET of partition 0 of TOPIC for GROUP (TxnOffsetCommit), prints
"PENDING", keeps the transaction open for HOLD_SECONDS, commits it and prints "COMMITTED".
"""
import asyncio
import sys
import uuid

from aiokafka import AIOKafkaProducer, TopicPartition


async def main():
    bootstrap, topic, group, offset, hold = sys.argv[1:6]
    txn = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"tests-{uuid.uuid4()}"
    )
    await txn.start()
    try:
        await txn.begin_transaction()
        await txn.send_offsets_to_transaction(
            {TopicPartition(topic, 0): int(offset)}, group
        )
        print("PENDING", flush=True)
        await asyncio.sleep(float(hold))
        await txn.commit_transaction()
        print("COMMITTED", flush=True)
    finally:
        await txn.stop()


asyncio.run(main())
