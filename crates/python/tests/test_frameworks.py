"""The LangChain and LlamaIndex classes against the real packages (langchain-core,
llama-index-core): the adapters each method uses, the async methods, and a similarity search
inside each framework returning the document (and score) that Model's own vectors pick."""

import asyncio

import numpy as np
import pytest

from jina_embeddings import Model

# The small fixture is random weights, so "the expected document" is the one the model's own
# query and passage vectors rank first, computed here with numpy; the framework must find it.
DOCS = [
    "Paris is the capital and largest city of France.",
    "Berlin liegt an der Spree und ist die Hauptstadt Deutschlands.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "The mitochondria is the powerhouse of the cell.",
]
QUERIES = ["capital of France", "Hauptstadt", "日本の首都", "столица", "cell biology"]


def expected(model: Model, dimensions: int):
    q = model.encode_query(QUERIES, dimensions=dimensions)
    d = model.encode_document(DOCS, dimensions=dimensions)
    scores = q @ d.T  # unit vectors: cosine
    return scores.argmax(axis=1), scores.max(axis=1)


def test_langchain_embeddings_use_the_retrieval_adapters(model):
    from jina_embeddings.langchain import JinaEmbeddings

    e = JinaEmbeddings(model, dimensions=64)
    docs = np.asarray(e.embed_documents(DOCS), dtype=np.float32)
    np.testing.assert_allclose(docs, model.encode_document(DOCS, dimensions=64), atol=1e-6)
    query = np.asarray(e.embed_query(QUERIES[0]), dtype=np.float32)
    np.testing.assert_allclose(query, model.encode_query(QUERIES[:1], dimensions=64)[0], atol=1e-6)
    assert not np.allclose(query, model.encode_document(QUERIES[:1], dimensions=64)[0])
    assert e.embed_documents([]) == []
    adocs, aquery = asyncio.run(_both(e.aembed_documents(DOCS), e.aembed_query(QUERIES[0])))
    np.testing.assert_allclose(np.asarray(adocs, dtype=np.float32), docs, atol=1e-6)
    np.testing.assert_allclose(np.asarray(aquery, dtype=np.float32), query, atol=1e-6)


def test_langchain_in_memory_vector_store_search(model):
    from langchain_core.vectorstores import InMemoryVectorStore

    from jina_embeddings.langchain import JinaEmbeddings

    store = InMemoryVectorStore.from_texts(DOCS, JinaEmbeddings(model, dimensions=64))
    best, best_score = expected(model, 64)
    for query, b, s in zip(QUERIES, best, best_score):
        [(doc, score)] = store.similarity_search_with_score(query, k=1)
        assert doc.page_content == DOCS[b], query
        assert score == pytest.approx(float(s), abs=1e-5)


def test_langchain_from_a_folder_and_errors(fixture_dir):
    from jina_embeddings.langchain import JinaEmbeddings

    e = JinaEmbeddings(fixture_dir, dimensions=32, threads=1)
    assert len(e.embed_query("x")) == 32
    with pytest.raises(ValueError, match="dimensions"):
        JinaEmbeddings(fixture_dir, dimensions=100000).embed_query("x")


def test_llamaindex_embedding_use_the_retrieval_adapters(model):
    from jina_embeddings.llamaindex import JinaEmbedding

    e = JinaEmbedding(model, dimensions=64, embed_batch_size=2)
    docs = np.asarray(e.get_text_embedding_batch(DOCS), dtype=np.float32)
    np.testing.assert_allclose(docs, model.encode_document(DOCS, dimensions=64), atol=1e-6)
    one = np.asarray(e.get_text_embedding(DOCS[0]), dtype=np.float32)
    np.testing.assert_allclose(one, docs[0], atol=1e-6)
    query = np.asarray(e.get_query_embedding(QUERIES[0]), dtype=np.float32)
    np.testing.assert_allclose(query, model.encode_query(QUERIES[:1], dimensions=64)[0], atol=1e-6)
    aquery, adocs = asyncio.run(_both(e.aget_query_embedding(QUERIES[0]), e.aget_text_embedding_batch(DOCS)))
    np.testing.assert_allclose(np.asarray(aquery, dtype=np.float32), query, atol=1e-6)
    np.testing.assert_allclose(np.asarray(adocs, dtype=np.float32), docs, atol=1e-6)
    assert e.model_name == model.model and JinaEmbedding.class_name() == "JinaEmbeddingsRs"


def test_llamaindex_vector_store_index_retrieval(model):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from jina_embeddings.llamaindex import JinaEmbedding

    # Nodes, not Documents: the default splitter would fetch a tokenizer file from the network.
    nodes = [TextNode(text=t, id_=str(i)) for i, t in enumerate(DOCS)]
    index = VectorStoreIndex(nodes, embed_model=JinaEmbedding(model, dimensions=64))
    retriever = index.as_retriever(similarity_top_k=1)
    best, best_score = expected(model, 64)
    for query, b, s in zip(QUERIES, best, best_score):
        [hit] = retriever.retrieve(query)
        assert hit.node.get_content() == DOCS[b], query
        assert hit.score == pytest.approx(float(s), abs=1e-5)


def test_the_base_package_does_not_import_the_frameworks():
    import subprocess
    import sys

    code = ("import sys, jina_embeddings, jina_embeddings.ray, jina_embeddings.spark; "
            "bad = [m for m in ('langchain_core', 'llama_index', 'pyspark', 'ray') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


async def _both(a, b):
    return await asyncio.gather(a, b)
