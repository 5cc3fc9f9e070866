"""The official openai SDK against a gateway with `max_concurrent = 1` (URL in env LLMPROXY_LIMITED_URL).

Started by `tests/limits.rs`. While a slow stream holds the only slot, a second request gets 429
with `retry-after: 1`; the SDK's built-in retry must wait that long (its own backoff would retry
after about 0.5 s) and then succeed.
"""

import os
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

URL = os.environ.get("LLMPROXY_LIMITED_URL")
pytestmark = pytest.mark.skipif(not URL, reason="LLMPROXY_LIMITED_URL not set (started by tests/limits.rs)")

MESSAGES = [{"role": "user", "content": "say hello"}]


def test_sdk_retry_honours_retry_after_then_succeeds():
    events = []

    def on_request(request):
        events.append(("request", time.monotonic(), None))

    def on_response(response):
        events.append(("response", time.monotonic(), response.status_code, response.headers.get("retry-after")))

    base = URL.rstrip("/") + "/v1"
    slow = openai.OpenAI(base_url=base, api_key="sk-test", max_retries=0, timeout=20)
    first_chunk = threading.Event()
    done = threading.Event()

    def hold_the_slot():
        stream = slow.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-mock-tokens": "6", "x-mock-itl-ms": "150"},
        )
        for _ in stream:
            first_chunk.set()
        done.set()

    t = threading.Thread(target=hold_the_slot)
    t.start()
    assert first_chunk.wait(10), "the slow stream did not start"

    client = openai.OpenAI(
        base_url=base,
        api_key="sk-test",
        max_retries=3,
        timeout=20,
        http_client=httpx.Client(event_hooks={"request": [on_request], "response": [on_response]}),
    )
    r = client.chat.completions.create(model="m", messages=MESSAGES)
    t.join(20)
    assert done.is_set()
    assert r.choices[0].message.content

    responses = [e for e in events if e[0] == "response"]
    requests = [e for e in events if e[0] == "request"]
    assert responses[0][2] == 429, events
    assert responses[0][3] == "1", events
    assert responses[-1][2] == 200, events
    # The retry went out no sooner than retry-after said.
    first_429_at = responses[0][1]
    retry_at = requests[1][1]
    assert retry_at - first_429_at >= 0.9, events
