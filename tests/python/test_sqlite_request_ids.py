"""Three requests sent with one client x-request-id through the real gateway: three records with
three distinct request_ids, and the SQLite example receiver counts three (it deduplicates on
request_id, which only the gateway chooses). Also: an existing usage.db of the old schema is
migrated (new columns added, old rows kept).

Starts `llmproxy mock-backend`, the gateway and the receiver itself. The binary comes from env
LLMPROXY_BIN, else target/debug/llmproxy; skipped when there is none (under CI it fails).
"""

import importlib.util
import json
import os
import pathlib
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request

import pytest

CI = os.environ.get("CI", "").lower() in ("true", "1")
if CI:
    import flask  # noqa: F401
else:
    pytest.importorskip("flask")

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("LLMPROXY_BIN", ROOT / "target" / "debug" / "llmproxy"))
if not BIN.exists():
    if CI:
        raise RuntimeError(f"llmproxy binary {BIN} missing")
    pytest.skip(f"llmproxy binary {BIN} missing (cargo build, or set LLMPROXY_BIN)", allow_module_level=True)


def load_receiver():
    spec = importlib.util.spec_from_file_location(
        "receiver_sqlite", ROOT / "examples" / "webhook" / "receiver_sqlite.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    end = time.time() + 20
    while time.time() < end:
        assert proc.poll() is None, f"{what} exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port}")


def post(url, body, headers):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=20) as r:
        return r.status, dict(r.headers), r.read()


def old_schema_db(path):
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE usage (request_id TEXT PRIMARY KEY, user_id TEXT, api_key TEXT, model TEXT,"
            " prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,"
            " total_tokens INTEGER NOT NULL DEFAULT 0, is_stream INTEGER, endpoint TEXT, timestamp TEXT,"
            " backend_url TEXT, status TEXT, http_status INTEGER, duration_ms INTEGER, ttft_ms INTEGER,"
            " usage_missing INTEGER NOT NULL DEFAULT 0, record TEXT NOT NULL)"
        )
        conn.execute(
            "INSERT INTO usage (request_id, user_id, prompt_tokens, record) VALUES ('old_1', 'old', 7, '{}')"
        )


def test_one_client_request_id_three_records(tmp_path, monkeypatch):
    from werkzeug.serving import make_server

    monkeypatch.chdir(tmp_path)
    old_schema_db(tmp_path / "usage.db")
    receiver = load_receiver()
    rport = free_port()
    server = make_server("127.0.0.1", rport, receiver.app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    bport, gport = free_port(), free_port()
    procs = []
    try:
        backend = subprocess.Popen(
            [str(BIN), "mock-backend", "--listen", f"127.0.0.1:{bport}", "--ttft-ms", "1", "--itl-ms", "1",
             "--tokens", "4", "--details"],
            stderr=subprocess.DEVNULL,
        )
        procs.append(backend)
        wait_port(bport, backend, "mock-backend")
        cfg = tmp_path / "gw.toml"
        cfg.write_text(
            f'listen = "127.0.0.1:{gport}"\nshutdown_grace = "2s"\n[runtime]\nworkers = 1\npin_cores = false\n'
            f'[[backends]]\nurl = "http://127.0.0.1:{bport}"\n[health_check]\ninterval = "200ms"\n'
            f'[usage_hook]\nenabled = true\nurl = "http://127.0.0.1:{rport}/llm-usage"\n'
            f'spool_dir = "{tmp_path / "spool"}"\n'
        )
        gw = subprocess.Popen([str(BIN), "--config", str(cfg)], stderr=subprocess.DEVNULL)
        procs.append(gw)
        wait_port(gport, gw, "gateway")
        ours = set()
        body = {"model": "m", "messages": [{"role": "user", "content": "one two three four"}]}
        for _ in range(3):
            status, headers, _ = post(
                f"http://127.0.0.1:{gport}/v1/chat/completions",
                body,
                {"Content-Type": "application/json", "x-request-id": "same-client-id", "x-user-id": "carol"},
            )
            assert status == 200
            assert headers.get("x-request-id") == "same-client-id"
            ours.add(headers["x-llmproxy-request-id"])
        assert len(ours) == 3
        end = time.time() + 20
        rows = []
        while time.time() < end:
            try:
                with sqlite3.connect(tmp_path / "usage.db") as conn:
                    rows = conn.execute(
                        "SELECT request_id, client_request_id, cached_tokens, usage_source FROM usage"
                        " WHERE client_request_id = 'same-client-id'"
                    ).fetchall()
            except sqlite3.OperationalError:
                rows = []  # not migrated yet: the receiver migrates on its first delivery
            if len(rows) >= 3:
                break
            time.sleep(0.05)
        assert sorted(r[0] for r in rows) == sorted(ours)
        assert all(r[2] == 2 and r[3] == "final" for r in rows), rows
        summary = receiver.app.test_client().get("/usage/summary").get_json()["users"]
        total = sum(u["requests"] for u in summary)
        assert total == 4, summary  # the three new ones and the migrated old row
        assert any(u["user_id"] == "old" and u["prompt_tokens"] == 7 for u in summary), summary
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        server.shutdown()
