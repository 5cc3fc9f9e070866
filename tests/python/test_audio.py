"""The official openai Python SDK's audio.transcriptions.create (a multipart upload) through a
running LLMProxy whose backend serves Whisper (URL in env LLMPROXY_AUDIO_URL; run by
`tests/endpoints.rs`, skipped when that variable is not set).
"""

import os

import pytest

openai = pytest.importorskip("openai")

URL = os.environ.get("LLMPROXY_AUDIO_URL")
pytestmark = pytest.mark.skipif(not URL, reason="LLMPROXY_AUDIO_URL not set (no Whisper gateway to test)")


def wav(seconds):
    # 16 kHz, 16-bit mono: 32000 bytes of samples per second after a 44-byte header.
    data = bytes((i * 7) % 251 for i in range(32000 * seconds))
    return b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt " + bytes(24) + b"data" + len(data).to_bytes(4, "little") + data


@pytest.fixture
def client():
    return openai.OpenAI(base_url=URL.rstrip("/") + "/v1", api_key="sk-audio-key", max_retries=0, timeout=20)


def test_transcription_through_the_gateway(client):
    r = client.audio.transcriptions.create(model="whisper-large-v3", file=("speech.wav", wav(2), "audio/wav"))
    assert r.text.startswith("tok0")
    assert r.usage is not None
    assert r.usage.type == "duration"
    assert r.usage.seconds == 3


def test_translation_through_the_gateway(client):
    r = client.audio.translations.create(model="whisper-large-v3", file=("speech.wav", wav(1), "audio/wav"))
    assert r.text.startswith("tok0")
