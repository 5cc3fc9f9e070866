"""The example webhook receivers (examples/webhook/*.py) through Flask's test client."""

import hashlib
import hmac
import importlib.util
import json
import os
import pathlib

import pytest

if os.environ.get("CI", "").lower() in ("true", "1"):
    import flask  # noqa: F401  (under CI a missing flask fails the run instead of skipping it)
else:
    pytest.importorskip("flask")

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "webhook"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rec(rid, user="alice", p=3, c=5):
    return {
        "request_id": rid, "user_id": user, "api_key": "sk-a...789", "model": "m",
        "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c, "is_stream": True,
        "endpoint": "/v1/chat/completions", "timestamp": "2026-01-14T10:30:00Z",
        "backend_url": "http://127.0.0.1:8000", "status": "ok", "http_status": 200,
        "duration_ms": 12, "ttft_ms": 3,
    }


def sign(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture(params=["receiver_jsonl", "receiver_sqlite"])
def receiver(request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMPROXY_SECRET", raising=False)
    mod = load(request.param)
    return request.param, mod, mod.app.test_client()


def stored_ids(name, tmp_path):
    if name == "receiver_jsonl":
        path = tmp_path / "usage_log.jsonl"
        return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]
    import sqlite3

    with sqlite3.connect(tmp_path / "usage.db") as conn:
        return [r[0] for r in conn.execute("SELECT request_id FROM usage ORDER BY rowid")]


def test_stores_objects_and_arrays(receiver, tmp_path):
    name, _, client = receiver
    assert client.post("/llm-usage", json=rec("req_1")).status_code == 200
    assert client.post("/llm-usage", json=[rec("req_2"), rec("req_3", user="bob")]).status_code == 200
    assert stored_ids(name, tmp_path) == ["req_1", "req_2", "req_3"]


def test_malformed_body_is_400(receiver):
    _, _, client = receiver
    r = client.post("/llm-usage", data=b"not json", content_type="application/json")
    assert r.status_code == 400
    assert client.post("/llm-usage", json=[{"no": "id"}]).status_code == 400


def test_signature_checked_when_secret_set(receiver, tmp_path, monkeypatch):
    name, _, client = receiver
    monkeypatch.setenv("LLMPROXY_SECRET", "s3cret")
    body = json.dumps(rec("req_sig")).encode()
    headers = {"Content-Type": "application/json"}
    assert client.post("/llm-usage", data=body, headers=headers).status_code == 401
    bad = dict(headers, **{"X-LLMProxy-Signature": sign("wrong", body)})
    assert client.post("/llm-usage", data=body, headers=bad).status_code == 401
    good = dict(headers, **{"X-LLMProxy-Signature": sign("s3cret", body)})
    assert client.post("/llm-usage", data=body, headers=good).status_code == 200
    assert stored_ids(name, tmp_path) == ["req_sig"]


def test_sqlite_dedups_request_id_and_summarizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMPROXY_SECRET", raising=False)
    client = load("receiver_sqlite").app.test_client()
    for body in [rec("req_1"), [rec("req_1"), rec("req_2", p=10, c=1)], rec("req_3", user="bob", p=1, c=1)]:
        assert client.post("/llm-usage", json=body).status_code == 200
    assert stored_ids("receiver_sqlite", tmp_path) == ["req_1", "req_2", "req_3"]
    users = {u["user_id"]: u for u in client.get("/usage/summary").get_json()["users"]}
    assert users["alice"] == {
        "user_id": "alice", "requests": 2, "prompt_tokens": 13, "completion_tokens": 6, "total_tokens": 19,
        "cached_tokens": 0, "reasoning_tokens": 0,
    }
    assert users["bob"]["total_tokens"] == 2
