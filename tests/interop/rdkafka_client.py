"""librdkafka (through the confluent-kafka wheel) as a peer of ours, for tests/peers.rs; the
same modes and output lines as JavaClient.java:

  produce BOOTSTRAP TOPIC N    N records per codec (none, gzip, snappy, lz4, zstd), values
                               "<codec>-<i>", keys "k-<i>", header "origin: librdkafka"; then a
                               transaction of "aborted-1", "aborted-2" that is aborted and one of
                               "committed" that is committed; prints DONE
  member BOOTSTRAP TOPIC GROUP SECONDS [PROTOCOL]
                               a consumer-group member (PROTOCOL "classic", the default, with the
                               range and round-robin assignors; "cooperative", classic with
                               cooperative-sticky; or "consumer", KIP-848); prints
                               "ASSIGNED [p, ...]" with all it holds after each change and
                               "MSG partition value" per record
  read BOOTSTRAP TOPIC N       a read_committed consumer of every partition from the start, until
                               N records; prints "REC partition key value timestamp headers -"
                               per record (librdkafka computes no murmur2 partition for us), then
                               DONE
"""

import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def produce(bootstrap: str, topic: str, n: int) -> None:
    for codec in CODECS:
        p = Producer(
            {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 5}
        )
        for i in range(n):
            p.produce(topic, key=f"k-{i}", value=f"{codec}-{i}", headers=[("origin", b"librdkafka")])
            p.poll(0)
        left = p.flush(30)
        if left:
            raise SystemExit(f"{left} records of {codec} not delivered")
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tests-{uuid.uuid4()}"})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, key="t", value="aborted-1")
    p.produce(topic, key="t", value="aborted-2")
    p.flush(30)
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, key="t", value="committed")
    p.commit_transaction(30)
    print("DONE", flush=True)


def consumer_config(bootstrap: str) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    }


def member(bootstrap: str, topic: str, group: str, seconds: int, protocol: str) -> None:
    settings = {"group.id": group, "auto.commit.interval.ms": 200}
    if protocol == "consumer":
        # KIP-848: the broker assigns; session and heartbeat settings are the broker's.
        settings["group.protocol"] = "consumer"
    else:
        settings |= {
            "group.protocol": "classic",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 300,
            "partition.assignment.strategy": (
                "cooperative-sticky" if protocol == "cooperative" else "range,roundrobin"
            ),
        }
    c = Consumer(consumer_config(bootstrap) | settings)
    held: set[int] = set()

    # Incremental under cooperative-sticky and the consumer protocol: print all that is held.
    def assigned(_consumer, parts):
        held.update(p.partition for p in parts)
        print("ASSIGNED [" + ", ".join(map(str, sorted(held))) + "]", flush=True)

    def revoked(_consumer, parts):
        held.difference_update(p.partition for p in parts)

    c.subscribe([topic], on_assign=assigned, on_revoke=revoked)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                print(f"ERROR {msg.error()}", file=sys.stderr, flush=True)
                continue
            print(f"MSG {msg.partition()} {msg.value().decode()}", flush=True)
    finally:
        c.close()
    print("DONE", flush=True)


def read(bootstrap: str, topic: str, n: int) -> None:
    c = Consumer(consumer_config(bootstrap) | {"group.id": f"reader-{uuid.uuid4()}"})
    meta = c.list_topics(topic, timeout=30)
    parts = sorted(meta.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, -2) for p in parts])  # -2: the beginning
    seen = 0
    end = time.monotonic() + 60
    while seen < n and time.monotonic() < end:
        msg = c.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        headers = ",".join(f"{k}={v.decode()}" for k, v in (msg.headers() or []))
        key = msg.key().decode() if msg.key() is not None else None
        _kind, ts = msg.timestamp()
        print(f"REC {msg.partition()} {key} {msg.value().decode()} {ts} {headers} -", flush=True)
        seen += 1
    c.close()
    print("DONE", flush=True)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "produce":
        produce(args[0], args[1], int(args[2]))
    elif mode == "member":
        member(args[0], args[1], args[2], int(args[3]), args[4] if len(args) > 4 else "classic")
    elif mode == "read":
        read(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
