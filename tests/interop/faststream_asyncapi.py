"""Prints the AsyncAPI 3.0 document Python FastStream generates for the seed service.

  faststream_asyncapi.py BOOTSTRAP
"""

import sys

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

broker = KafkaBroker(sys.argv[1])


@broker.subscriber("in_topic")
@broker.publisher("out-topic")
async def handle_msg(user: str, user_id: int) -> str:
    return f"User: {user_id} - {user} registered"


print(AsyncAPI(broker, schema_version="3.0.0").to_specification().to_json())
