"""LLMProxy usage webhook receiver that stores usage records in SQLite (usage.db), once each.

Run:  python3 examples/webhook/receiver_sqlite.py         (listens on 127.0.0.1:3001)
  or  flask --app examples/webhook/receiver_sqlite.py run --port 3001

Delivery is at least once, so records are deduplicated on request_id (the table's primary key,
INSERT OR IGNORE): a replayed record is answered 200 and not counted twice. When LLMPROXY_SECRET is
set, X-LLMProxy-Signature is verified (401 otherwise). GET /usage/summary returns the tokens per user.
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
    record TEXT NOT NULL
)
"""

COLUMNS = [
    "request_id", "user_id", "api_key", "model", "prompt_tokens", "completion_tokens", "total_tokens",
    "is_stream", "endpoint", "timestamp", "backend_url", "status", "http_status", "duration_ms",
    "ttft_ms", "usage_missing",
]


def db():
    conn = sqlite3.connect(DB_FILE, timeout=10)
    conn.execute(SCHEMA)
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
            "SELECT user_id, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens)"
            " FROM usage GROUP BY user_id ORDER BY user_id"
        ).fetchall()
    return jsonify(
        users=[
            {
                "user_id": u,
                "requests": n,
                "prompt_tokens": p or 0,
                "completion_tokens": c or 0,
                "total_tokens": t or 0,
            }
            for u, n, p, c, t in rows
        ]
    )


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "3001")))
