"""A consumer-group member written with aiokafka, for the interoperability test.

Usage: aiokafka_member.py BOOTSTRAP TOPIC GROUP SECONDS
Prints "ASSIGNED [partitions]" after each assignment and "MSG partition value" per message.
"""
import asyncio
import sys

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor


class Report(ConsumerRebalanceListener):
    async def on_partitions_revoked(self, revoked):
        pass

    async def on_partitions_assigned(self, assigned):
        print("ASSIGNED", sorted(tp.partition for tp in assigned), flush=True)


async def main():
    bootstrap, topic, group, seconds = sys.argv[1:5]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=300,
        auto_commit_interval_ms=200,
        # Both standard assignors, as the Java client offers: the test broker (Tansu) refuses a
        # member that lacks the group's current protocol instead of intersecting the lists.
        partition_assignment_strategy=(RoundRobinPartitionAssignor, RangePartitionAssignor),
    )
    consumer.subscribe([topic], listener=Report())
    await consumer.start()
    loop = asyncio.get_running_loop()
    end = loop.time() + float(seconds)
    try:
        while loop.time() < end:
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for m in messages:
                    print("MSG", m.partition, m.value.decode(), flush=True)
    finally:
        await consumer.stop()
    print("DONE", flush=True)


asyncio.run(main())
