"""A real PySpark job in local[2]: embed_udf (predict_batch_udf) over ~600 rows of mixed lengths
gives the vectors Model.encode gives on the same rows. The Spark tests are opt-in (JINA_PY_SPARK=1,
which also makes scripts/test-python.sh install PySpark): the JVM's start and PySpark's install
cost minutes (docs/quickstart-python.md has the figures). The predict function Spark's workers
run is tested without PySpark, always."""

import os
import sys
import time

import numpy as np
import pytest

from conftest import mixed_texts
from jina_embeddings import Model
from jina_embeddings.spark import embed_udf, make_predict_fn

spark_opt_in = pytest.mark.skipif(
    os.environ.get("JINA_PY_SPARK") != "1", reason="opt-in: JINA_PY_SPARK=1 (PySpark in local[2])"
)


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # The executors' Python workers must be this interpreter (the venv with the wheel).
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("jina-embeddings-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "1g")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@spark_opt_in
def test_spark_predict_batch_udf_matches_encode(spark, fixture_dir):
    from pyspark.sql.types import ArrayType, FloatType

    texts = mixed_texts(600, seed=11)
    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, body string").repartition(4)
    embed = embed_udf(fixture_dir, task="retrieval.passage", dimensions=64, precision="f32", batch_size=50)
    started = time.perf_counter()
    out = df.withColumn("vector", embed("body"))
    assert out.schema["vector"].dataType == ArrayType(FloatType())
    rows = sorted(out.collect(), key=lambda r: r["id"])
    elapsed = time.perf_counter() - started
    print(f"Spark local[2]: {len(rows)} rows in {elapsed:.1f} s ({len(rows) / elapsed:.0f} rows/s, "
          "worker start-up included)")
    assert [r["id"] for r in rows] == list(range(600))
    assert all(r["body"] == texts[r["id"]] for r in rows)
    got = np.asarray([r["vector"] for r in rows], dtype=np.float32)
    assert got.shape == (600, 64)
    want = Model(fixture_dir).encode(texts, task="retrieval.passage", dimensions=64)
    # Spark's float is float32, as encode's output: a vector does not depend on its batch.
    diff = float(np.abs(got - want).max())
    print(f"max |spark - encode| = {diff:.1e}")
    assert diff <= 1e-6


@spark_opt_in
def test_spark_default_task_and_options(spark, fixture_dir):
    texts = ["a", "the capital of France", "Москва"]
    df = spark.createDataFrame([(t,) for t in texts], "text string")
    rows = df.select(embed_udf(fixture_dir, dimensions=32, batch_size=2)("text").alias("v")).collect()
    want = Model(fixture_dir).encode(texts, dimensions=32)
    np.testing.assert_allclose(np.asarray([r["v"] for r in rows]), want, atol=1e-6)


# Without PySpark: what runs inside each worker.
def test_make_predict_fn_loads_once_per_process(fixture_dir):
    from jina_embeddings import spark as spark_module

    a = make_predict_fn(fixture_dir, task="retrieval.query", threads=1)()
    b = make_predict_fn(fixture_dir, task="retrieval.passage", threads=1)()
    loaded = [m for k, m in spark_module._models.items() if k[0] == os.path.abspath(fixture_dir) and k[2] == 1]
    assert len(loaded) == 1, "two predict functions on one model loaded it twice"
    out = a(np.array(["x", "y"], dtype=object))
    assert out.dtype == np.float32 and out.shape[0] == 2
    assert not np.allclose(out, b(np.array(["x", "y"], dtype=object)))  # the task reaches encode
    with pytest.raises(ValueError, match="batch_size"):
        embed_udf(fixture_dir, batch_size=0)
