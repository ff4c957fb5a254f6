"""A minimal Faust app for the broker-compatibility test: copy topic IN to OUT.

Topic names and the group come from the environment so each test run is isolated.
"""

import os

import faust

app = faust.App(
    os.environ["ECHO_APP_ID"],
    broker=f"kafka://{os.environ.get('ECHO_BOOTSTRAP', 'localhost:9092')}",
    value_serializer="raw",
    topic_partitions=4,
    web_enabled=False,
    datadir=os.environ["ECHO_DATADIR"],
    broker_commit_interval=0.5,
    # A member that left uncleanly is evicted after 10 s, not Faust's default 60 s.
    broker_session_timeout=10.0,
    broker_heartbeat_interval=1.0,
)
source = app.topic(os.environ["ECHO_IN"], value_serializer="raw", key_serializer="raw", partitions=4)
sink = app.topic(os.environ["ECHO_OUT"], value_serializer="raw", key_serializer="raw", partitions=4)


@app.agent(source)
async def echo(stream):
    async for event in stream.events():
        await sink.send(key=event.key, value=event.value + b"|" + os.environ["ECHO_WORKER"].encode())
