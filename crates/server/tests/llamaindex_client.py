"""Calls a running `jina-embed serve` with LlamaIndex's `JinaEmbedding`
(package llama-index-embeddings-jinaai) and prints what it got as JSON, for
crates/server/tests/http/llamaindex.rs to compare against the engine.

JinaEmbedding hard-codes the hosted URL (https://api.jina.ai/v1) and offers no base-URL option,
so this script points the client's own API caller at our server (`_api.api_url`, the one
attribute both its sync and async paths post to) and records the exact JSON bodies it sends.

Usage: llamaindex_client.py BASE_URL API_KEY   (BASE_URL without /v1)
"""

import asyncio
import importlib.metadata
import json
import sys

from llama_index.embeddings.jinaai import JinaEmbedding

base_url, api_key = sys.argv[1], sys.argv[2]
sent = []


def client(**kwargs):
    emb = JinaEmbedding(api_key=api_key, model="jina-embeddings-v3", **kwargs)
    assert emb._api.api_url == "https://api.jina.ai/v1/embeddings", emb._api.api_url
    emb._api.api_url = base_url + "/v1/embeddings"
    # Record every body the client sends (requests' response hook sees the prepared request).
    emb._api._session.hooks["response"].append(lambda r, *a, **k: sent.append(json.loads(r.request.body)))
    return emb


out = {"version": importlib.metadata.version("llama-index-embeddings-jinaai")}

# A query: retrieval.query with 64 dimensions, float.
q = client(task="retrieval.query", dimensions=64)
out["query"] = q.get_query_embedding("What is the capital of France?")
out["query_request"] = sent[-1]

# Documents in a batch, as ubinary: the client unpacks the bits itself.
d = client(task="retrieval.passage", encoding_documents="ubinary")
out["ubinary"] = d.get_text_embedding_batch(["Paris is the capital of France.", "Berlin is in Germany.", ""])
out["ubinary_request"] = sent[-1]

# binary (signed bytes), also unpacked by the client.
b = client(encoding_documents="binary")
out["binary"] = b.get_text_embedding_batch(["Paris is the capital of France."])
out["binary_request"] = sent[-1]

# Late chunking: the chunks of one document in one request.
lc = client(task="retrieval.passage", late_chunking=True)
out["late"] = lc.get_text_embedding_batch(["Paris is the capital of France.", "It lies on the Seine."])
out["late_request"] = sent[-1]

# The async path (aiohttp) posts to the same api_url.
out["async_query"] = asyncio.run(q.aget_query_embedding("What is the capital of France?"))

print(json.dumps(out))
