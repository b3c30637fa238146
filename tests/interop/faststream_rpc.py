"""Request/reply with Python FastStream, against a faststream-rs service.

  faststream_rpc.py BOOTSTRAP serve TOPIC
      a FastStream subscriber on TOPIC answering "py <body>" (to the request's reply_to);
      prints "ready" once it consumes, runs until killed.
  faststream_rpc.py BOOTSTRAP ask TOPIC REPLY_TOPIC
      publishes "ping" to TOPIC with reply_to=REPLY_TOPIC and correlation_id "py-1", waits for
      the answer on REPLY_TOPIC and prints "<correlation_id> <body>".
"""

import asyncio
import sys

from faststream.kafka import KafkaBroker, KafkaMessage


async def serve(bootstrap: str, topic: str) -> None:
    broker = KafkaBroker(bootstrap)

    @broker.subscriber(topic, auto_offset_reset="earliest")
    async def answer(body: str) -> str:
        return f"py {body}"

    async with broker:
        await broker.start()
        print("ready", flush=True)
        await asyncio.Event().wait()


async def ask(bootstrap: str, topic: str, reply_topic: str) -> None:
    broker = KafkaBroker(bootstrap)
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    @broker.subscriber(reply_topic, auto_offset_reset="earliest")
    async def replies(body: str, msg: KafkaMessage) -> None:
        if not got.done():
            got.set_result(f"{msg.correlation_id} {body}")

    async with broker:
        await broker.start()
        await broker.publish("ping", topic, reply_to=reply_topic, correlation_id="py-1")
        print(await asyncio.wait_for(got, 30), flush=True)


bootstrap, mode = sys.argv[1], sys.argv[2]
if mode == "serve":
    asyncio.run(serve(bootstrap, sys.argv[3]))
else:
    asyncio.run(ask(bootstrap, sys.argv[3], sys.argv[4]))
