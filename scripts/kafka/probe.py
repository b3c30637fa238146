"""How many brokers a Kafka cluster lists: `probe.py HOST:PORT` prints the number of brokers
in the Metadata answer of that node (exit 1 if it does not answer). scripts/kafka-dev waits
with it until every node of a cluster has registered. Standard library only."""
import socket
import struct
import sys


def brokers(addr: str, timeout: float = 2.0) -> int:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.settimeout(timeout)
        client = b"kafka-dev-probe"
        # Metadata v4: topics = null (all), allow_auto_topic_creation = false.
        body = struct.pack(">hhih", 3, 4, 1, len(client)) + client
        body += struct.pack(">i?", -1, False)
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", read(s, 4))[0]
        data = read(s, size)
    # correlation id, throttle time, then the brokers array's length.
    _correlation, _throttle, count = struct.unpack(">iii", data[:12])
    return count


def read(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


if __name__ == "__main__":
    try:
        print(brokers(sys.argv[1]))
    except (OSError, ValueError, struct.error):
        sys.exit(1)
