#!/bin/sh
# Runs the example usage receiver (examples/webhook/receiver_jsonl.py) for the compose stacks:
# POST /llm-usage appends each record to usage_log.jsonl in the working directory (/data).
set -eu
pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore flask
exec flask --app /app/receiver_jsonl.py run --host 0.0.0.0 --port 3001
