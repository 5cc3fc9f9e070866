"""The official openai Python SDK against a running LLMProxy (URL in env LLMPROXY_URL).

Starts nothing itself: `tests/openai_sdk.rs` starts a simulated backend and the gateway, then runs
`python3 -m pytest -q tests/python` with LLMPROXY_URL set.
"""

import os

import pytest

openai = pytest.importorskip("openai")

URL = os.environ.get("LLMPROXY_URL")
pytestmark = pytest.mark.skipif(not URL, reason="LLMPROXY_URL not set (no gateway to test)")

MESSAGES = [{"role": "user", "content": "say hello"}]


@pytest.fixture
def client():
    return openai.OpenAI(base_url=URL.rstrip("/") + "/v1", api_key="sk-test-key", max_retries=0, timeout=20)


def test_stream_without_stream_options_has_no_empty_choices_chunk(client):
    # The gateway injects include_usage; the extra usage-only chunk (choices: []) must not reach an
    # SDK user who iterates chunk.choices[0] as every OpenAI example does.
    text = ""
    chunks = 0
    for chunk in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
        chunks += 1
        text += chunk.choices[0].delta.content or ""
        assert chunk.usage is None
    assert chunks > 1
    assert "tok0" in text


def test_non_streaming_usage(client):
    r = client.chat.completions.create(model="m", messages=MESSAGES)
    assert r.choices[0].message.content
    assert r.usage is not None
    assert r.usage.prompt_tokens == 2
    assert r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_with_include_usage_gets_final_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == 2
    assert last.usage.completion_tokens > 0
    assert all(c.choices for c in chunks[:-1])


def test_completions_stream_and_raw_request_id(client):
    raw = client.completions.with_raw_response.create(model="m", prompt="a b c")
    assert raw.headers.get("x-request-id")
    assert raw.parse().usage.prompt_tokens == 3
    texts = [c.choices[0].text for c in client.completions.create(model="m", prompt="a b c", stream=True)]
    assert "".join(texts).strip()


def test_embeddings_usage(client):
    r = client.embeddings.create(model="m", input=["one two", "three"])
    assert len(r.data) == 2
    assert r.usage.prompt_tokens == 3
