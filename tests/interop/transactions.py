"""Transactions as a real transactional producer writes them (aiokafka), for the
read_committed test against Apache Kafka.

Usage: transactions.py BOOTSTRAP TOPIC
Writes to partition 0 of TOPIC: "plain" (no transaction), then a transaction of "aborted-1"
and "aborted-2" that is aborted, then a transaction of "committed" that is committed. On
Kafka the offsets are 0 plain, 1-2 aborted, 3 abort marker, 4 committed, 5 commit marker.
Prints "DONE" at the end.
"""
import asyncio
import sys
import uuid

from aiokafka import AIOKafkaProducer


async def main():
    bootstrap, topic = sys.argv[1:3]
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await plain.start()
    try:
        await plain.send_and_wait(topic, b"plain", partition=0)
    finally:
        await plain.stop()
    txn = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"tests-{uuid.uuid4()}"
    )
    await txn.start()
    try:
        await txn.begin_transaction()
        await txn.send_and_wait(topic, b"aborted-1", partition=0)
        await txn.send_and_wait(topic, b"aborted-2", partition=0)
        await txn.abort_transaction()
        await txn.begin_transaction()
        await txn.send_and_wait(topic, b"committed", partition=0)
        await txn.commit_transaction()
    finally:
        await txn.stop()
    print("DONE", flush=True)


asyncio.run(main())
