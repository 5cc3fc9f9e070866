"""LLMProxy usage webhook receiver that stores usage records in SQLite (usage.db), once each.

Run:  python3 examples/webhook/receiver_sqlite.py         (listens on 127.0.0.1:3001)
  or  flask --app examples/webhook/receiver_sqlite.py run --port 3001

Delivery is at least once, so records are deduplicated on request_id (the table's primary key,
INSERT OR IGNORE): a replayed record is answered 200 and not counted twice. When LLMPROXY_SECRET is
set, X-LLMProxy-Signature is verified (401 otherwise). GET /usage/summary returns the tokens per user.

request_id is the gateway's own id (128 random bits, never the client's x-request-id, which is kept
in client_request_id), so deduplicating on it never merges two requests. cached_tokens,
cache_creation_tokens, reasoning_tokens and usage_source ("final", "partial", "estimated", "none")
are stored in their own columns; a usage.db made by an older version gains them at start (NULL for
old rows).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3

from flask import Flask, jsonify, request

DB_FILE = "usage.db"

app = Flask(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT PRIMARY KEY,
    user_id TEXT,
    api_key TEXT,
    model TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    is_stream INTEGER,
    endpoint TEXT,
    timestamp TEXT,
    backend_url TEXT,
    status TEXT,
    http_status INTEGER,
    duration_ms INTEGER,
    ttft_ms INTEGER,
    usage_missing INTEGER NOT NULL DEFAULT 0,
    record TEXT NOT NULL,
    cached_tokens INTEGER,
    cache_creation_tokens INTEGER,
    reasoning_tokens INTEGER,
    usage_source TEXT,
    client_request_id TEXT
)
"""

# Columns added after the first schema: (name, SQL type). An existing file gains the missing ones.
ADDED = [
    ("cached_tokens", "INTEGER"),
    ("cache_creation_tokens", "INTEGER"),
    ("reasoning_tokens", "INTEGER"),
    ("usage_source", "TEXT"),
    ("client_request_id", "TEXT"),
]

COLUMNS = [
    "request_id", "user_id", "api_key", "model", "prompt_tokens", "completion_tokens", "total_tokens",
    "is_stream", "endpoint", "timestamp", "backend_url", "status", "http_status", "duration_ms",
    "ttft_ms", "usage_missing", "cached_tokens", "cache_creation_tokens", "reasoning_tokens",
    "usage_source", "client_request_id",
]


def migrate(conn):
    """Adds the columns an older usage.db lacks (idempotent)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
    for name, kind in ADDED:
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE usage ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError:
                pass  # another worker added it meanwhile


_migrated = False


def db():
    global _migrated
    conn = sqlite3.connect(DB_FILE, timeout=10)
    conn.execute(SCHEMA)
    if not _migrated:
        with conn:
            migrate(conn)
        _migrated = True
    return conn


def signature_ok(body: bytes, header: str | None) -> bool:
    """True when no secret is configured, or when the header is the body's HMAC-SHA256."""
    secret = os.environ.get("LLMPROXY_SECRET", "")
    if not secret:
        return True
    if not header or not header.startswith("sha256="):
        return False
    want = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, header[len("sha256=") :].strip().lower())


def records_of(body: bytes):
    """The records of a webhook body (object or array of objects), or None when malformed."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    records = data if isinstance(data, list) else [data]
    if not all(isinstance(r, dict) and isinstance(r.get("request_id"), str) for r in records):
        return None
    return records


@app.post("/llm-usage")
def llm_usage():
    body = request.get_data()
    if not signature_ok(body, request.headers.get("X-LLMProxy-Signature")):
        return jsonify(error="bad signature"), 401
    records = records_of(body)
    if records is None:
        return jsonify(error="expected a usage record or an array of them"), 400
    rows = [
        [r.get("usage_missing", False) if c == "usage_missing" else r.get(c) for c in COLUMNS]
        + [json.dumps(r, separators=(",", ":"))]
        for r in records
    ]
    placeholders = ",".join("?" * (len(COLUMNS) + 1))
    with db() as conn:  # one transaction: all records of a batch or none
        before = conn.total_changes
        conn.executemany(
            f"INSERT OR IGNORE INTO usage ({','.join(COLUMNS)}, record) VALUES ({placeholders})", rows
        )
        stored = conn.total_changes - before
    return jsonify(stored=stored, duplicates=len(records) - stored), 200


@app.get("/usage/summary")
def summary():
    with db() as conn:
        rows = conn.execute(
            "SELECT user_id, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens),"
            " SUM(cached_tokens), SUM(reasoning_tokens) FROM usage GROUP BY user_id ORDER BY user_id"
        ).fetchall()
    return jsonify(
        users=[
            {
                "user_id": u,
                "requests": n,
                "prompt_tokens": p or 0,
                "completion_tokens": c or 0,
                "total_tokens": t or 0,
                "cached_tokens": ca or 0,
                "reasoning_tokens": r or 0,
            }
            for u, n, p, c, t, ca, r in rows
        ]
    )


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "3001")))
