"""Calls a running `jina-embed serve` with the official `openai` Python SDK and prints what it got
as JSON, for crates/server/tests/http/openai.rs to compare against the engine.

Usage: openai_client.py BASE_URL API_KEY   (BASE_URL without /v1)
"""

import json
import sys

import httpx
import openai
from openai import OpenAI

base_url, api_key = sys.argv[1], sys.argv[2]
sent = []


def record(request: httpx.Request) -> None:
    if request.method == "POST":
        sent.append(json.loads(request.content))


http_client = httpx.Client(event_hooks={"request": [record]})
client = OpenAI(base_url=base_url + "/v1", api_key=api_key, http_client=http_client, max_retries=0)
out = {"openai_version": openai.__version__}


def result(response):
    return {
        "model": response.model,
        "object": response.object,
        "indices": [d.index for d in response.data],
        "embeddings": [list(map(float, d.embedding)) for d in response.data],
        "prompt_tokens": response.usage.prompt_tokens,
        "total_tokens": response.usage.total_tokens,
    }


# The default call: the SDK asks for base64 and decodes it with numpy.
out["default"] = result(
    client.embeddings.create(
        model="jina-embeddings-v3",
        input=["What is the capital of France?", "Paris is the capital of France.", ""],
    )
)
out["default_request"] = sent[-1]

# Jina's fields through extra_body, OpenAI's dimensions.
out["query64"] = result(
    client.embeddings.create(
        model="jina-embeddings-v3",
        input="What is the capital of France?",
        dimensions=64,
        extra_body={"task": "retrieval.query"},
    )
)

# Floats on request.
out["float"] = result(
    client.embeddings.create(model="jina-embeddings-v3", input="Paris", encoding_format="float")
)

# Errors surface as the SDK's typed exceptions with the server's message.
try:
    client.embeddings.create(model="jina-embeddings-v3", input="x", extra_body={"task": "bogus"})
    out["unknown_task"] = None
except openai.APIStatusError as e:
    out["unknown_task"] = {"status": e.status_code, "class": type(e).__name__, "body": e.body}

try:
    OpenAI(base_url=base_url + "/v1", api_key="wrong-key", max_retries=0).embeddings.create(
        model="jina-embeddings-v3", input="x"
    )
    out["wrong_key"] = None
except openai.APIStatusError as e:
    out["wrong_key"] = {"status": e.status_code, "class": type(e).__name__, "body": e.body}

print(json.dumps(out))
