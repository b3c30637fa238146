"""Publishes one message with Python FastStream's OpenTelemetry middleware, so it carries a W3C
`traceparent` header for a faststream-rs service to continue.

  traced_publish.py BOOTSTRAP TOPIC BODY
      publishes BODY to TOPIC inside the middleware's publish span; prints that span's trace id
      (32 hex digits).
"""

import asyncio
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware


async def main(bootstrap: str, topic: str, body: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = KafkaBroker(
        bootstrap, middlewares=(KafkaTelemetryMiddleware(tracer_provider=provider),)
    )
    async with broker:
        await broker.publish(body, topic=topic)
    spans = exporter.get_finished_spans()
    assert spans, "the middleware recorded a publish span"
    print(format(spans[0].context.trace_id, "032x"), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
