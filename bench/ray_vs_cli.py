"""Rows/s of a Ray Data job with two actors against `jina-embed embed` on the same text file, on
this machine, one run each (docs/quickstart-python.md has the figure).

    .venv-py/bin/python bench/ray_vs_cli.py --jina-embed target/release/jina-embed --rows 2000

Writes the small fixture checkpoint (`jina-embed fixture`) and a text file of `--rows` lines of
mixed lengths (1 to ~400 words, several scripts) into --work, then times:
  * `jina-embed embed --threads 2` from the file to .npy (process start and model load included);
  * Ray Data on a local cluster of 2 CPUs: read_text, map_batches(Embedder) on two one-thread
    actors, write_numpy (actor start and model loads included; ray.init not).
Both embed with retrieval.passage at the full width; the vectors are compared at the end.
"""

import argparse
import os
import pathlib
import platform
import random
import subprocess
import sys
import time

import numpy as np


def texts(n, seed=7):
    rng = random.Random(seed)
    words = "the capital of France is Paris Berlin liegt an der Spree 東京は日本の首都です Москва столица".split()
    return [" ".join(rng.choice(words) for _ in range(rng.choice([1, 3, 10, 40, 120, 400]))) for _ in range(n)]


def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jina-embed", default="target/release/jina-embed")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--work", default="/tmp/jina-ray-vs-cli")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "small"
    subprocess.run([args.jina_embed, "fixture", "--out", str(model)], check=True, stdout=subprocess.DEVNULL)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(texts(args.rows)) + "\n", encoding="utf-8")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average before: {os.getloadavg()}")
    print(f"{args.rows} lines, small fixture (hidden 128, 2 layers), retrieval.passage, f32")

    out_cli = work / "cli.npy"
    started = time.perf_counter()
    subprocess.run([args.jina_embed, "embed", "--model", str(model), "--task", "retrieval.passage",
                    "--input", str(corpus), "--format", "text", "--output", str(out_cli), "--overwrite",
                    "--threads", "2", "--quiet"], check=True)
    cli_s = time.perf_counter() - started
    print(f"jina-embed embed --threads 2: {args.rows} rows in {cli_s:.2f} s = {args.rows / cli_s:.0f} rows/s")

    import ray
    from jina_embeddings.ray import Embedder

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    started = time.perf_counter()
    # The read task takes no CPU slot: the two actors hold both, and a read waiting for one
    # would wait forever.
    ds = ray.data.read_text(str(corpus), num_cpus=0)
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model": str(model), "task": "retrieval.passage",
                                                         "threads": 1},
                        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1, batch_size=args.batch_size)
    rows = ds.materialize()
    ray_s = time.perf_counter() - started
    n = rows.count()
    print(f"Ray Data, 2 actors x 1 thread: {n} rows in {ray_s:.2f} s = {n / ray_s:.0f} rows/s")
    frame = rows.to_pandas()
    ray.shutdown()
    # The actors may finish blocks out of order: match rows by their text (equal texts, equal
    # vectors).
    lines = corpus.read_text(encoding="utf-8").splitlines()
    first = {t: i for i, t in reversed(list(enumerate(lines)))}
    got = np.stack(frame["embedding"].to_numpy())
    want = np.load(out_cli)[[first[t] for t in frame["text"]]]
    print(f"max |ray - cli| = {float(np.abs(got - want).max()):.1e}; ratio Ray/CLI = {cli_s / ray_s:.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    sys.exit(main())
