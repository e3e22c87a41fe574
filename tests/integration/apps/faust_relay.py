"""A minimal faust-streaming app for the broker-compatibility test: relays SRC to DST, upper-cased.

Configured by environment (BOOTSTRAP, SRC, DST, APP_ID, DATA_DIR) so the test can run it as a
subprocess: `python faust_relay.py worker -l warn`.
"""

import os

import faust

app = faust.App(
    os.environ["APP_ID"],
    broker=f"kafka://{os.environ['BOOTSTRAP']}",
    store="memory://",
    datadir=os.environ["DATA_DIR"],
    web_enabled=False,
    topic_replication_factor=1,
)
source = app.topic(os.environ["SRC"], value_serializer="raw", key_serializer="raw")
sink = app.topic(os.environ["DST"], value_serializer="raw", key_serializer="raw")


@app.agent(source)
async def relay(stream):
    async for event in stream.events():
        await sink.send(key=event.key, value=event.value.upper())


if __name__ == "__main__":
    app.main()
