"""LLMProxy usage webhook receiver that appends every usage record to usage_log.jsonl.

Run:  python3 examples/webhook/receiver_jsonl.py          (listens on 127.0.0.1:3001)
  or  flask --app examples/webhook/receiver_jsonl.py run --port 3001

Point the gateway at it with `[usage_hook] url = "http://127.0.0.1:3001/llm-usage"`. A POST body is
one record (JSON object) or, with `batch_max > 1`, a JSON array of records. When the env variable
LLMPROXY_SECRET is set (the same value as `[usage_hook] secret`), the X-LLMProxy-Signature header
(`sha256=<hex HMAC-SHA256 of the body>`) is checked and a request without a valid one gets 401.

Delivery is at least once: a record can arrive twice (same request_id). This receiver only appends;
deduplicate on request_id when you read the file (or see receiver_sqlite.py). request_id is the
gateway's own id (128 random bits): two requests never share it, whatever x-request-id the client
sent (that one is in client_request_id). Records carry cached_tokens, cache_creation_tokens,
reasoning_tokens and usage_source ("final", "partial", "estimated", "none"); null when unknown.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

from flask import Flask, jsonify, request

LOG_FILE = "usage_log.jsonl"

app = Flask(__name__)


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
    with open(LOG_FILE, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return jsonify(stored=len(records)), 200


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "3001")))
