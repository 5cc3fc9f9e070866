#!/usr/bin/env python3
"""JetStream consumer for usage_hook.sink = "nats": reads usage records from the stream, dedupes on
request_id (INSERT OR IGNORE on the primary key, as the webhook receivers do) into SQLite, and acks
each message only after it is stored, so a crash of this consumer loses nothing and replays at most
what was not acked yet.

    pip install nats-py
    NATS_URL=nats://127.0.0.1:4222 python3 examples/nats/consumer_sqlite.py   # usage.db
    python3 examples/nats/consumer_sqlite.py --drain   # exit once the stream has nothing more (cron, tests)

Creates the stream USAGE on subject llm.usage (2 h duplicate window) if it does not exist. Works for
format = "record" and format = "cloudevents" (the record is then the event's "data").
"""
import asyncio, json, os, sqlite3, sys

import nats
from nats.js.api import StreamConfig

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
SUBJECT = os.environ.get("NATS_SUBJECT", "llm.usage")
STREAM = os.environ.get("NATS_STREAM", "USAGE")
DB = os.environ.get("USAGE_DB", "usage.db")


def open_db():
    db = sqlite3.connect(DB)
    db.execute(
        """CREATE TABLE IF NOT EXISTS usage (
            request_id TEXT PRIMARY KEY, user_id TEXT, model TEXT, prompt_tokens INTEGER,
            completion_tokens INTEGER, total_tokens INTEGER, status TEXT, timestamp TEXT, record TEXT)"""
    )
    return db


async def main(drain=False):
    db = open_db()
    nc = await nats.connect(URL)
    js = nc.jetstream()
    try:
        await js.stream_info(STREAM)
    except Exception:
        await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], duplicate_window=7200))
    sub = await js.pull_subscribe(SUBJECT, durable="usage-sqlite")
    print(f"consuming {SUBJECT} from {URL} into {DB}", flush=True)
    while True:
        try:
            msgs = await sub.fetch(100, timeout=2 if drain else 5)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nats-py raises either when idle
            if drain:
                break
            continue
        bad = set()
        for m in msgs:
            try:
                v = json.loads(m.data)
                rec = v.get("data", v) if v.get("specversion") else v
                rec["request_id"]
            except (ValueError, TypeError, KeyError, AttributeError):
                print(f"not a usage record, dropped: {m.data[:200]!r}", file=sys.stderr, flush=True)
                bad.add(id(m))
                continue
            db.execute(
                "INSERT OR IGNORE INTO usage VALUES (?,?,?,?,?,?,?,?,?)",
                (rec["request_id"], rec.get("user_id"), rec.get("model"), rec.get("prompt_tokens"),
                 rec.get("completion_tokens"), rec.get("total_tokens"), rec.get("status"),
                 rec.get("timestamp"), json.dumps(rec)),
            )
        db.commit()
        for m in msgs:
            if id(m) in bad:
                await m.term()  # never redelivered: it would fail the same way
            else:
                await m.ack()
    await nc.flush()  # the acks reach the server before the connection closes
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(drain="--drain" in sys.argv[1:]))
