"""The official openai SDK against the gateway's TLS listener, trusting a private CA
(tests/tls.rs starts the gateway and sets LLMPROXY_TLS_URL and LLMPROXY_TLS_CA)."""
import os

import pytest

URL = os.environ.get("LLMPROXY_TLS_URL")
CA = os.environ.get("LLMPROXY_TLS_CA")
pytestmark = pytest.mark.skipif(not URL, reason="run by tests/tls.rs (needs LLMPROXY_TLS_URL)")


def client():
    import ssl

    import openai

    # The SDK's own HTTP client class, trusting the test CA (the certificate names localhost).
    verify = ssl.create_default_context(cafile=CA)
    return openai.OpenAI(base_url=URL + "/v1", api_key="sk-test", http_client=openai.DefaultHttpxClient(verify=verify))


def test_chat_completion_over_tls():
    r = client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    assert r.usage.completion_tokens > 0


def test_streaming_over_tls():
    chunks = list(
        client().chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert any(c.usage for c in chunks)


def test_untrusted_ca_is_refused():
    import openai

    c = openai.OpenAI(base_url=URL + "/v1", api_key="sk-test", max_retries=0, http_client=openai.DefaultHttpxClient())
    with pytest.raises(openai.APIConnectionError):
        c.models.list()
