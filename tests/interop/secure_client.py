"""Checks the tests' secured front with an independent client (aiokafka).

Usage: secure_client.py BOOTSTRAP TOPIC PROTOCOL [MECHANISM USER PASSWORD] [--ca F]
       [--cert F --key F] [--token T]
Produces one record to TOPIC and reads it back; exits 0 and prints "ok" on success, exits 1
with the error otherwise.
"""

import argparse
import asyncio
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.helpers import create_ssl_context


class Token(AbstractTokenProvider):
    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token


def settings(args: argparse.Namespace) -> dict:
    out = {"bootstrap_servers": args.bootstrap, "security_protocol": args.protocol}
    if "SSL" in args.protocol:
        out["ssl_context"] = create_ssl_context(
            cafile=args.ca, certfile=args.cert, keyfile=args.key
        )
    if args.protocol.startswith("SASL"):
        out["sasl_mechanism"] = args.mechanism
        if args.mechanism == "OAUTHBEARER":
            out["sasl_oauth_token_provider"] = Token(args.token)
        else:
            out["sasl_plain_username"] = args.user
            out["sasl_plain_password"] = args.password
    return out


async def main(args: argparse.Namespace) -> None:
    producer = AIOKafkaProducer(request_timeout_ms=10000, **settings(args))
    await producer.start()
    try:
        await producer.send_and_wait(args.topic, b"through the front")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        args.topic, auto_offset_reset="earliest", **settings(args)
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 20)
        assert msg.value == b"through the front", msg.value
    finally:
        await consumer.stop()
    print("ok", flush=True)


parser = argparse.ArgumentParser()
parser.add_argument("bootstrap")
parser.add_argument("topic")
parser.add_argument("protocol")
parser.add_argument("mechanism", nargs="?")
parser.add_argument("user", nargs="?")
parser.add_argument("password", nargs="?")
parser.add_argument("--ca")
parser.add_argument("--cert")
parser.add_argument("--key")
parser.add_argument("--token")
try:
    asyncio.run(asyncio.wait_for(main(parser.parse_args()), 60))
except Exception as e:  # noqa: BLE001 - the test reads the reason
    print(f"failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
