#!/usr/bin/env python3
"""Compare `jina-embed bench` with PyTorch (transformers) and ONNX Runtime on the same shapes.

Every (engine, shape) pair runs in its own subprocess, so the peak RSS reported is that engine's
alone (load included, as in `jina-embed bench`). Shapes are the outer loop, so all engines of one
shape run close together in time: on a shared machine only ratios taken in one run mean anything.
With --rounds R the whole sequence runs R times; each ratio is then the median over the rounds of
the ratio within a round (two engines measured minutes apart, not hours), and each engine's
figures are those of its median round.

Engines
  ours-f32, ours-bf16, ours-int8  `jina-embed bench --precision P` (its own timing and JSON line)
  torch-f32, torch-bf16           transformers' native `JinaEmbeddingsV3Model` (sdpa attention),
                                  loaded with the fixture's own weights, LoRA merged for --task
  ort-f32                         that torch model exported with `torch.onnx.export` (dynamic
                                  batch and sequence axes), run by onnxruntime (ORT_ENABLE_ALL)
  ort-int8                        ort-f32 after `onnxruntime.quantization.quantize_dynamic` (QInt8)

Weights: the fixture's bf16 tensors are widened to f32 exactly, the task's LoRA delta
`0.25 * B[t] @ A[t]` (embeddings: `A[t] @ B[t]`) is added in f32, the packed Wqkv is split into
q/k/v, and the result is assigned into the transformers model (torch-bf16 rounds that to bf16).

Inputs are the same synthetic token ids `jina-embed bench` uses (<s>, N-2 ids from mix64, </s>),
with an all-ones attention mask. Correctness: the model's mean-pooled, L2-normalised output on a
few real texts (tokenised with the fixture's tokenizer.json, padded batch) is compared by cosine
with `jina-embed embed` on the same texts.

Threads: torch.set_num_threads(T) and ORT intra_op_num_threads=T. By default (--wait-policy passive)
torch's OpenMP threads and ORT's pool threads sleep instead of spinning when idle, because spinning
threads stall badly when other processes share the cores (docs/benchmarks.md).

Run it through scripts/bench-compare.sh, which creates bench/.venv first.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ALL_ENGINES = ["ours-f32", "ours-bf16", "ours-int8", "torch-f32", "torch-bf16", "ort-f32", "ort-int8"]
DEFAULT_ENGINES = "ours-f32,ours-bf16,torch-f32,torch-bf16,ort-f32"
# Our engine against each baseline: (ours, theirs).
RATIOS = [
    ("ours-f32", "torch-f32"),
    ("ours-f32", "ort-f32"),
    ("ours-bf16", "torch-bf16"),
    ("ours-int8", "ort-int8"),
]
MASK64 = (1 << 64) - 1

# Real texts for the correctness check (one per line for `jina-embed embed`; different lengths,
# so the torch/ORT batch is padded and the attention mask is exercised).
CHECK_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Jina embeddings turn text into vectors that can be compared by cosine similarity.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
    "Le modèle traite jusqu'à 8192 jetons par séquence grâce aux embeddings rotatifs.",
    " ".join(
        "Late chunking embeds a long document in one forward pass and pools the token vectors of each chunk"
        " separately, so every chunk keeps the context of the whole text." for _ in range(6)
    ),
]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        b, _, n = part.lower().partition("x")
        shapes.append((int(b), int(n)))
    return shapes


def shape_name(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def mix64(z: int) -> int:
    """splitmix64's finaliser, exactly as `jina_engine::fixture::mix64`."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def synthetic_ids(seed: int, tokens: int, vocab: int) -> list[int]:
    """The ids `jina-embed bench` feeds: <s>, tokens-2 pseudo-random ordinary ids, </s>."""
    ids = [0]
    z = mix64(seed + 1)
    for _ in range(tokens - 2):
        z = mix64(z)
        ids.append(5 + z % (vocab - 6))
    ids.append(2)
    return ids


def peak_rss_mb() -> float:
    """Peak RSS of this process in MiB (VmHWM, the figure `jina-embed bench` reports)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / max(na * nb, 1e-30)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def read_config(model_dir: Path) -> dict:
    with open(model_dir / "config.json") as f:
        return json.load(f)


def task_index(cfg: dict, task: str) -> int | None:
    if task == "none":
        return None
    tasks = cfg.get("lora_adaptations") or []
    if task not in tasks:
        raise SystemExit(f"unknown task {task!r}; the model has {tasks} (or none)")
    return tasks.index(task)


# --------------------------------------------------------------------------------------------
# The torch model: transformers' native JinaEmbeddingsV3Model with the fixture's weights
# --------------------------------------------------------------------------------------------

class SafetensorsReader:
    """Reads tensors of a .safetensors file with plain reads (no mmap), so that the file's pages
    never count in this process's RSS: the torch baseline's RSS is its own weights."""

    DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}

    def __init__(self, path: Path):
        import struct

        self.file = open(path, "rb", buffering=0)
        (n,) = struct.unpack("<Q", self.file.read(8))
        self.header = json.loads(self.file.read(n))
        self.header.pop("__metadata__", None)
        self.base = 8 + n

    def keys(self) -> set[str]:
        return set(self.header)

    def shape(self, name: str) -> list[int]:
        return list(self.header[name]["shape"])

    def read(self, name: str, rows: tuple[int, int] | None = None, index: int | None = None):
        """The tensor `name`, or rows [start, stop) of its first axis, or its entry `index` there."""
        import torch

        meta = self.header[name]
        dtype = getattr(torch, self.DTYPES[meta["dtype"]])
        shape = list(meta["shape"])
        begin, end = meta["data_offsets"]
        row_bytes = (end - begin) // max(1, shape[0])
        if index is not None:
            rows, squeeze = (index, index + 1), True
        else:
            squeeze = False
        if rows is not None:
            begin += rows[0] * row_bytes
            end = begin + (rows[1] - rows[0]) * row_bytes
            shape[0] = rows[1] - rows[0]
        buf = bytearray(end - begin)
        view, done = memoryview(buf), 0
        while done < len(buf):
            got = os.preadv(self.file.fileno(), [view[done:]], self.base + begin + done)
            if got <= 0:
                raise SystemExit(f"short read in {name}")
            done += got
        t = torch.frombuffer(buf, dtype=dtype).reshape(shape) if buf else torch.empty(shape, dtype=dtype)
        return t[0] if squeeze else t

    def close(self) -> None:
        self.file.close()


def load_torch_model(model_dir: Path, task: str, dtype_name: str):
    """transformers' `JinaEmbeddingsV3Model` (sdpa), weights from our safetensors, LoRA merged."""
    import torch
    from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    cfg = read_config(model_dir)
    t = task_index(cfg, task)
    scale = float(cfg.get("lora_alpha", 1)) / float(cfg.get("lora_rank", 4))
    hidden = cfg["hidden_size"]
    config = JinaEmbeddingsV3Config(
        vocab_size=cfg["vocab_size"],
        hidden_size=hidden,
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        intermediate_size=cfg["intermediate_size"],
        hidden_act=cfg.get("hidden_act", "gelu"),
        max_position_embeddings=cfg.get("max_position_embeddings", 8194),
        type_vocab_size=cfg.get("type_vocab_size", 1),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
        pad_token_id=cfg.get("pad_token_id", 1),
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.get("rotary_emb_base", 20000.0))},
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "sdpa"

    f = SafetensorsReader(model_dir / "model.safetensors")
    keys = f.keys()

    def plain(name: str):
        return f.read(f"roberta.{name}").float()

    def weight(module: str, embedding: bool = False):
        """Base weight of `module` with the task's LoRA delta, in `dtype` (merged in f32)."""
        base = f"roberta.{module}.parametrizations.weight.original"
        if base not in keys:
            return plain(f"{module}.weight").to(dtype)
        a_key = f"roberta.{module}.parametrizations.weight.0.lora_A"
        b_key = f"roberta.{module}.parametrizations.weight.0.lora_B"
        lora = t is not None and a_key in keys
        if embedding:  # A [V, r], B [r, H]: E + s * A @ B, in row blocks to bound memory
            rows, cols = f.shape(base)
            out = torch.empty((rows, cols), dtype=dtype)
            b = f.read(b_key, index=t).float() if lora else None
            a = f.read(a_key, index=t).float() if lora else None
            for start in range(0, rows, 16384):
                stop = min(rows, start + 16384)
                block = f.read(base, rows=(start, stop)).float()
                if lora:
                    block += scale * (a[start:stop] @ b)
                out[start:stop] = block.to(dtype)
            return out
        w = f.read(base).float()
        if lora:  # A [r, in], B [out, r]: W + s * B @ A
            w += scale * (f.read(b_key, index=t).float() @ f.read(a_key, index=t).float())
        return w.to(dtype)

    sd = {}

    def put(name, tensor):
        sd[name] = tensor.to(dtype).contiguous()  # no copy when already `dtype` and contiguous

    put("embeddings.word_embeddings.weight", weight("embeddings.word_embeddings", embedding=True))
    put("embeddings.token_type_embeddings.weight", weight("embeddings.token_type_embeddings", embedding=True))
    put("embeddings.LayerNorm.weight", plain("emb_ln.weight"))
    put("embeddings.LayerNorm.bias", plain("emb_ln.bias"))
    for layer in range(cfg["num_hidden_layers"]):
        src = f"encoder.layers.{layer}"
        dst = f"layers.{layer}"
        wqkv = weight(f"{src}.mixer.Wqkv")
        bqkv = plain(f"{src}.mixer.Wqkv.bias")
        for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):  # rows: Q, then K, then V
            put(f"{dst}.self_attn.{proj}.weight", wqkv[i * hidden:(i + 1) * hidden])
            put(f"{dst}.self_attn.{proj}.bias", bqkv[i * hidden:(i + 1) * hidden])
        del wqkv
        put(f"{dst}.self_attn.o_proj.weight", weight(f"{src}.mixer.out_proj"))
        put(f"{dst}.self_attn.o_proj.bias", plain(f"{src}.mixer.out_proj.bias"))
        put(f"{dst}.post_attention_layernorm.weight", plain(f"{src}.norm1.weight"))
        put(f"{dst}.post_attention_layernorm.bias", plain(f"{src}.norm1.bias"))
        put(f"{dst}.mlp.fc1.weight", weight(f"{src}.mlp.fc1"))
        put(f"{dst}.mlp.fc1.bias", plain(f"{src}.mlp.fc1.bias"))
        put(f"{dst}.mlp.fc2.weight", weight(f"{src}.mlp.fc2"))
        put(f"{dst}.mlp.fc2.bias", plain(f"{src}.mlp.fc2.bias"))
        put(f"{dst}.post_mlp_layernorm.weight", plain(f"{src}.norm2.weight"))
        put(f"{dst}.post_mlp_layernorm.bias", plain(f"{src}.norm2.bias"))
    if "roberta.pooler.dense.bias" in keys:  # CLS pooler: computed by forward(), unused for embeddings
        put("pooler.dense.weight", weight("pooler.dense"))
        put("pooler.dense.bias", plain("pooler.dense.bias"))
    f.close()

    with torch.device("meta"):
        model = JinaEmbeddingsV3Model(config)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [m for m in missing if not m.startswith("pooler.")]
    if missing or unexpected:
        raise SystemExit(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    if model.pooler is not None and model.pooler.dense.weight.is_meta:
        model.pooler = None
    # Non-persistent buffers were created on the meta device: build them for real.
    emb = model.embeddings
    n_pos = emb.position_ids.shape[-1]
    emb.register_buffer("position_ids", torch.arange(n_pos).expand((1, -1)), persistent=False)
    emb.register_buffer("token_type_ids", torch.zeros((1, n_pos), dtype=torch.long), persistent=False)
    model.rotary_emb = type(model.rotary_emb)(config)
    for name, buf in model.named_buffers():
        if buf.is_meta:
            raise SystemExit(f"buffer {name} left on the meta device")
    model.eval()
    return model


def pooled(model, input_ids, attention_mask):
    """Mean pooling in f32 over the mask (the official `encode()`), then L2 normalisation."""
    import torch

    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
    m = attention_mask.unsqueeze(-1).float()
    e = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, dim=-1)


def pooled_module(model):
    """nn.Module for the ONNX export: (input_ids, attention_mask) -> normalised embeddings."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return pooled(self.inner, input_ids, attention_mask)

    return Pooled(model)


def check_batch(model_dir: Path, task: str):
    """Token ids and mask of CHECK_TEXTS (task prefix prepended), right-padded with id 1."""
    from tokenizers import Tokenizer

    cfg = read_config(model_dir)
    prefix = (cfg.get("task_instructions") or {}).get(task, "") if task != "none" else ""
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    ids = [tok.encode(prefix + text).ids for text in CHECK_TEXTS]
    width = max(len(x) for x in ids)
    pad = cfg.get("pad_token_id", 1)
    mask = [[1] * len(x) + [0] * (width - len(x)) for x in ids]
    ids = [x + [pad] * (width - len(x)) for x in ids]
    return ids, mask


# --------------------------------------------------------------------------------------------
# Workers (each in its own process)
# --------------------------------------------------------------------------------------------

def emit(obj: dict) -> None:
    print("RESULT " + json.dumps(obj), flush=True)


def time_runs(fn, iters: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(max(1, iters)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def shape_result(engine, shape, threads, times, extra=None):
    b, n = shape
    med = statistics.median(times)
    out = {
        "engine": engine,
        "shape": shape_name(shape),
        "batch": b,
        "tokens": n,
        "threads": threads,
        "tokens_per_s": b * n / med,
        "min_s": min(times),
        "median_s": med,
        "peak_rss_mb": peak_rss_mb(),
    }
    out.update(extra or {})
    return out


def worker_torch(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    dtype_name = args.engine.split("-")[1]
    t0 = time.perf_counter()
    model = load_torch_model(Path(args.model), args.task, dtype_name)
    load_s = time.perf_counter() - t0
    vocab = model.config.vocab_size
    with torch.inference_mode():
        for shape in parse_shapes(args.shapes):
            b, n = shape
            ids = torch.tensor([synthetic_ids(i, n, vocab) for i in range(b)], dtype=torch.long)
            mask = torch.ones_like(ids)
            times = time_runs(lambda: pooled(model, ids, mask), args.iters)
            # What oneDNN/ATen dispatch to (ONEDNN_MAX_CPU_ISA caps it): named in the report.
            capability = torch.backends.cpu.get_cpu_capability()
            emit(shape_result(args.engine, shape, args.threads, times, {"load_s": load_s, "cpu_capability": capability}))
        if args.check:
            ids, mask = check_batch(Path(args.model), args.task)
            e = pooled(model, torch.tensor(ids), torch.tensor(mask))
            emit({"engine": args.engine, "check": e.tolist(), "peak_rss_mb": peak_rss_mb()})


def export_onnx(model_dir: Path, task: str, out_dir: Path) -> Path:
    """torch.onnx.export of the transformers model (f32) with dynamic batch/sequence axes."""
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = load_torch_model(model_dir, task, "f32")
    wrapper = pooled_module(model).eval()
    ids = torch.tensor([synthetic_ids(i, 16, model.config.vocab_size) for i in range(2)], dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("sequence", min=2, max=8194)
    with torch.inference_mode():
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embeddings"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            opset_version=18,
            dynamo=True,
            external_data=True,
            optimize=True,
        )
    return path


def quantize_onnx(src: Path, dst_dir: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / "model.int8.onnx"
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=True)
    return dst


def worker_export(args) -> None:
    t0 = time.perf_counter()
    path = export_onnx(Path(args.model), args.task, Path(args.onnx_dir))
    info = {"export_s": time.perf_counter() - t0, "path": str(path), "peak_rss_mb": peak_rss_mb()}
    if args.quantize:
        t1 = time.perf_counter()
        qpath = quantize_onnx(path, Path(args.onnx_dir))
        info["quantize_s"] = time.perf_counter() - t1
        info["int8_path"] = str(qpath)
    emit(info)


def worker_ort(args) -> None:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if os.environ.get("OMP_WAIT_POLICY") == "PASSIVE":  # --wait-policy passive: no spinning pool threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    t0 = time.perf_counter()
    sess = ort.InferenceSession(args.onnx, sess_options=opts, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    vocab = read_config(Path(args.model))["vocab_size"]
    for shape in parse_shapes(args.shapes):
        b, n = shape
        ids = np.array([synthetic_ids(i, n, vocab) for i in range(b)], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        times = time_runs(lambda: sess.run(None, feed), args.iters)
        emit(shape_result(args.engine, shape, args.threads, times, {"load_s": load_s}))
    if args.check:
        ids, mask = check_batch(Path(args.model), args.task)
        (e,) = sess.run(None, {"input_ids": np.array(ids, dtype=np.int64), "attention_mask": np.array(mask, dtype=np.int64)})
        emit({"engine": args.engine, "check": e.tolist(), "peak_rss_mb": peak_rss_mb()})


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def run_worker(argv: list[str], threads: int, timeout: float | None, wait_policy: str = "passive") -> tuple[list[dict], str]:
    """Run this script as a worker; returns its RESULT objects and (on failure) its error text."""
    # Threads are set through each library's API (torch.set_num_threads, ORT intra_op_num_threads).
    # OMP_WAIT_POLICY: see --wait-policy.
    env = dict(os.environ)
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy.upper()
    cmd = [sys.executable, str(Path(__file__).resolve())] + argv
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s"
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    err = ""
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        err = f"exit {proc.returncode}: " + "\n".join(tail)
    return results, err


def ours_supports(binary: Path, precision: str) -> bool:
    try:
        out = subprocess.run([str(binary), "bench", "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return f"- {precision}:" in out or f"{precision}," in out or f", {precision}" in out


def run_ours(binary: Path, args, precision: str, shape) -> tuple[dict | None, str]:
    cmd = [
        str(binary), "bench", "--model", str(args.model), "--shape", shape_name(shape),
        "--precision", precision, "--task", args.task, "--iters", str(args.iters), "--threads", str(args.threads),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {args.timeout:.0f} s"
    if proc.returncode != 0:
        return None, f"exit {proc.returncode}: " + proc.stderr.strip()[-1500:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if not lines:
        return None, "no JSON line in its output"
    rep = json.loads(lines[-1])
    rep["engine"] = f"ours-{precision}"
    return rep, ""


def ours_check(binary: Path, args) -> tuple[list[list[float]] | None, str]:
    with tempfile.TemporaryDirectory(prefix="jina-compare-") as tmp:
        src = Path(tmp) / "texts.txt"
        src.write_text("\n".join(CHECK_TEXTS) + "\n")
        cmd = [str(binary), "embed", "--model", str(args.model), "--task", args.task, "--threads", str(args.threads),
               "--input", str(src), "--format", "text", "--output", "-"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        return None, proc.stderr.strip()[-1500:]
    rows = [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]
    rows.sort(key=lambda r: r["index"])
    return [r["embedding"] for r in rows], ""


def source_state(binary: Path) -> str:
    """Which build of jina-embed ran: its mtime and the checkout's HEAD (read-only git calls)."""
    parts = []
    try:
        parts.append("built " + _dt.datetime.fromtimestamp(binary.stat().st_mtime).strftime("%Y-%m-%d %H:%M"))
    except OSError:
        return "binary missing"
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30, env=env).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "crates", "Cargo.toml",
                                "Cargo.lock"], capture_output=True, timeout=60, env=env).returncode
        if head:
            parts.append(f"checkout at {head}" + (" with uncommitted changes under crates/" if dirty else ""))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return ", ".join(parts)


def versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "onnxruntime", "onnx", "numpy"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing package just is not listed
            pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder (e.g. one from `jina-embed fixture --variant full`)")
    ap.add_argument("--shapes", default="8x128,4x512,1x2048,1x8192", help="BATCHxTOKENS, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per shape, after one warm-up")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every (shape, engine) this many times, interleaved; ratios are medians of the per-round ratios")
    ap.add_argument("--engines", default=DEFAULT_ENGINES, help=f"comma-separated, from {','.join(ALL_ENGINES)}")
    ap.add_argument("--skip", default="ort-f32@1x8192,ort-int8@1x8192",
                    help="ENGINE@SHAPE pairs not to run (default: ORT at 1x8192, which needs ~21 GB); '' runs all")
    ap.add_argument("--task", default="text-matching", help="task adapter (LoRA merged into the torch weights)")
    ap.add_argument("--bin", default=str(REPO / "target/release/jina-embed"), help="the jina-embed binary")
    ap.add_argument("--onnx-dir", default=None,
                    help="keep the exported ONNX model here and reuse it if present (default: a temp dir, removed)")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check")
    ap.add_argument("--wait-policy", choices=["passive", "active", "default"], default="passive",
                    help="idle threads of torch (OMP_WAIT_POLICY) and ORT (allow_spinning) sleep (passive) or spin "
                         "(active); default leaves both libraries as they are. Spinning OpenMP threads stall "
                         "when other processes share the cores (see docs/benchmarks.md)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per subprocess")
    ap.add_argument("--out", default=None, help="append the markdown report to this file")
    ap.add_argument("--json", default=None, help="write all results as JSON to this file")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["torch", "ort", "export"], help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--onnx", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quantize", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker == "torch":
        worker_torch(args)
        return 0
    if args.worker == "ort":
        worker_ort(args)
        return 0
    if args.worker == "export":
        worker_export(args)
        return 0
    return drive(args)


def drive(args) -> int:
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1 (got {args.rounds})")
    args.load_before = load_average()
    model_dir = Path(args.model).resolve()
    args.model = str(model_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (model_dir / name).exists():
            raise SystemExit(f"{model_dir} has no {name} (make one with `jina-embed fixture --out DIR --variant full`)")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ALL_ENGINES:
            raise SystemExit(f"unknown engine {e!r}; choose from {ALL_ENGINES}")
    shapes = parse_shapes(args.shapes)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    cfg = read_config(model_dir)
    binary = Path(args.bin)
    started = _dt.datetime.now()
    notes: list[str] = []
    unavailable: dict[str, str] = {}

    # ---- availability ------------------------------------------------------------------------
    for e in engines:
        if e.startswith("ours-"):
            precision = e.split("-")[1]
            if not binary.exists():
                unavailable[e] = f"{binary} not found (build it with `cargo build --release`)"
            elif not ours_supports(binary, precision):
                unavailable[e] = f"`jina-embed bench` has no --precision {precision}"
        elif e.startswith("torch-"):
            try:
                import torch  # noqa: F401
                from transformers import JinaEmbeddingsV3Model  # noqa: F401
            except Exception as exc:  # noqa: BLE001
                unavailable[e] = f"torch/transformers with JinaEmbeddingsV3Model not importable ({exc})"
        elif e.startswith("ort-"):
            try:
                import onnx  # noqa: F401
                import onnxruntime  # noqa: F401
                import torch  # noqa: F401
                from transformers import JinaEmbeddingsV3Model  # noqa: F401
            except Exception as exc:  # noqa: BLE001
                unavailable[e] = f"onnxruntime/onnx/torch not importable ({exc})"
            if e == "ort-int8" and "ort-int8" not in unavailable:
                try:
                    import onnxruntime.quantization  # noqa: F401
                except Exception as exc:  # noqa: BLE001
                    unavailable[e] = f"onnxruntime.quantization not importable ({exc})"
    caps = {k: os.environ[k] for k in ("JINA_MAX_ISA", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY") if os.environ.get(k)}
    if caps:
        notes.append("instruction sets capped: " + ", ".join(f"{k}={v}" for k, v in caps.items())
                     + " (ONNX Runtime's MLAS has no such switch: it runs what the CPU has)")
    for e, why in unavailable.items():
        log(f"[skip] {e}: {why}")
        notes.append(f"{e} skipped: {why}")
    active = [e for e in engines if e not in unavailable]

    results: dict[tuple[str, str], dict] = {}
    failures: dict[tuple[str, str], str] = {}
    checks: dict[str, float] = {}

    # ---- ONNX export (once, before timing) ----------------------------------------------------
    tmp_onnx = None
    onnx_paths: dict[str, str] = {}
    ort_engines = [e for e in active if e.startswith("ort-")]
    if ort_engines:
        if args.onnx_dir:
            onnx_dir = Path(args.onnx_dir).resolve()
        else:
            tmp_onnx = tempfile.mkdtemp(prefix="jina-compare-onnx-")
            onnx_dir = Path(tmp_onnx)
        stamp = onnx_dir / "stamp.json"
        want = {"model": str(model_dir), "task": args.task,
                "mtime": (model_dir / "model.safetensors").stat().st_mtime}
        f32_path, int8_path = onnx_dir / "model.onnx", onnx_dir / "model.int8.onnx"
        fresh = stamp.exists() and json.loads(stamp.read_text()) == want and f32_path.exists()
        need_int8 = "ort-int8" in ort_engines and not (fresh and int8_path.exists())
        if not fresh or need_int8:
            log(f"[export] torch.onnx.export -> {onnx_dir}" + (" (+ quantize_dynamic int8)" if need_int8 else ""))
            argv = ["--worker", "export", "--model", args.model, "--task", args.task, "--onnx-dir", str(onnx_dir)]
            if need_int8:
                argv.append("--quantize")
            res, err = run_worker(argv, args.threads, args.timeout, args.wait_policy)
            if err or not res:
                for e in ort_engines:
                    unavailable[e] = f"ONNX export failed: {err or 'no result'}"
                    log(f"[skip] {e}: {unavailable[e]}")
                    notes.append(f"{e} skipped: ONNX export failed")
                active = [e for e in active if e not in unavailable]
            else:
                stamp.write_text(json.dumps(want))
                log(f"[export] done in {res[0]['export_s']:.0f} s" +
                    (f", int8 in {res[0]['quantize_s']:.0f} s" if "quantize_s" in res[0] else ""))
        onnx_paths = {"ort-f32": str(f32_path), "ort-int8": str(int8_path)}

    # ---- timing: rounds outer, then shapes, engines inner -------------------------------------
    first_shape_of: dict[str, str] = {}
    rounds: dict[tuple[str, str], list[dict]] = {}
    for rnd in range(args.rounds):
        for shape in shapes:
            sname = shape_name(shape)
            for e in active:
                if f"{e}@{sname}" in skip or e in skip:
                    if rnd == 0:
                        log(f"[skip] {e} @ {sname} (--skip)")
                    continue
                if (e, sname) in failures:
                    continue
                do_check = not args.no_check and e not in first_shape_of and not e.startswith("ours-")
                first_shape_of.setdefault(e, sname)
                log(f"[run] {e} @ {sname}" + (f" (round {rnd + 1} of {args.rounds})" if args.rounds > 1 else "") + " ...")
                t0 = time.perf_counter()
                if e.startswith("ours-"):
                    rep, err = run_ours(binary, args, e.split("-")[1], shape)
                    reps = [rep] if rep else []
                else:
                    argv = ["--worker", e.split("-")[0], "--engine", e, "--model", args.model, "--shapes", sname,
                            "--threads", str(args.threads), "--iters", str(args.iters), "--task", args.task]
                    if e.startswith("ort-"):
                        argv += ["--onnx", onnx_paths[e]]
                    if do_check:
                        argv.append("--check")
                    reps, err = run_worker(argv, args.threads, args.timeout, args.wait_policy)
                for rep in reps:
                    if "check" in rep:
                        checks[e] = rep["check"]
                    else:
                        rounds.setdefault((e, sname), []).append(rep)
                if err:
                    failures[(e, sname)] = err
                    log(f"[fail] {e} @ {sname}: {err}")
                elif (e, sname) in rounds:
                    r = rounds[(e, sname)][-1]
                    log(f"[done] {e} @ {sname}: {r['tokens_per_s']:.1f} tok/s, median {r['median_s']:.3f} s, "
                        f"peak RSS {r['peak_rss_mb']:.0f} MB ({time.perf_counter() - t0:.0f} s wall)")
    # An engine's figures: its median round (by tokens/s), with every round's tokens/s and peak RSS.
    for key, reps in rounds.items():
        median_rep = sorted(reps, key=lambda r: r["tokens_per_s"])[(len(reps) - 1) // 2]
        results[key] = dict(median_rep, rounds_tokens_per_s=[r["tokens_per_s"] for r in reps],
                            rounds_peak_rss_mb=[r.get("peak_rss_mb") for r in reps])

    if tmp_onnx:
        shutil.rmtree(tmp_onnx, ignore_errors=True)

    # ---- correctness --------------------------------------------------------------------------
    cos_lines: list[str] = []
    cos_values: dict[str, float] = {}
    if not args.no_check and checks:
        ours_vecs, err = ours_check(binary, args) if binary.exists() else (None, "no binary")
        if ours_vecs is None:
            cos_lines.append(f"`jina-embed embed` failed, no cosine: {err}")
        else:
            for e, vecs in checks.items():
                c = min(cosine(a, b) for a, b in zip(vecs, ours_vecs))
                cos_values[e] = c
            if "torch-f32" in checks:
                for e, vecs in checks.items():
                    if e != "torch-f32":
                        cos_values[f"{e} vs torch-f32"] = min(cosine(a, b) for a, b in zip(vecs, checks["torch-f32"]))
    for e in ("ours-bf16", "ours-int8"):
        vals = [r.get("cosine_to_f32_min") for (eng, _), r in results.items() if eng == e and r.get("cosine_to_f32_min") is not None]
        if vals:
            cos_values[f"{e} vs ours-f32 (bench inputs)"] = min(vals)

    # ---- report ------------------------------------------------------------------------------
    ratios = ratio_rows(shapes, rounds)
    report = render(args, cfg, shapes, engines, active, results, ratios, failures, skip, cos_values, notes, started)
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n")
        log(f"[out] appended to {args.out}")
    payload = {
        "started": started.isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "threads": args.threads,
        "iters": args.iters,
        "rounds": args.rounds,
        "task": args.task,
        "versions": versions(),
        "results": list(results.values()),
        "ratios": ratios,
        "cosine_min": cos_values,
        "failures": {f"{e}@{s}": v for (e, s), v in failures.items()},
        "notes": notes,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    print("JSON " + json.dumps({k: payload[k] for k in ("cpu", "threads", "iters", "rounds", "results", "ratios", "cosine_min")}))
    bad = [k for k, v in cos_values.items() if k == "torch-f32" and v < 0.9999]
    if bad:
        log(f"[error] torch-f32 does not match ours-f32 (cosine {cos_values['torch-f32']:.6f} < 0.9999)")
        return 2
    return 1 if failures else 0


def ratio_rows(shapes, rounds) -> list[dict]:
    """Per shape, each of our engines against its baseline: the median over the rounds of the
    ratio within a round (tokens/s of the median iteration, and of the fastest), and the list."""
    rows = []
    for shape in shapes:
        s = shape_name(shape)
        row = {"shape": s}
        for ours, theirs in RATIOS:
            a, b = rounds.get((ours, s), []), rounds.get((theirs, s), [])
            pairs = list(zip(a, b))
            if pairs:
                median = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in pairs]
                fastest = [y["min_s"] / x["min_s"] for x, y in pairs]
                row[f"{ours}/{theirs}"] = statistics.median(median)
                row[f"{ours}/{theirs} (fastest iteration)"] = statistics.median(fastest)
                if len(pairs) > 1:
                    row[f"{ours}/{theirs} (rounds)"] = median
        rows.append(row)
    return rows


def render(args, cfg, shapes, engines, active, results, ratio_list, failures, skip, cos_values, notes, started) -> str:
    lines = []
    # What each of our engines really ran (the precision the CPU resolved, the kernels).
    for e in engines:
        ran = next((r for (eng, _), r in results.items() if eng == e and "isa" in r), None)
        torch_ran = next((r for (eng, _), r in results.items() if eng == e and "cpu_capability" in r), None)
        if torch_ran:
            notes.append(f"{e}: torch.backends.cpu.get_cpu_capability() = {torch_ran['cpu_capability']}")
        if ran:
            notes.append(f"{e} ran {ran['precision']} (requested {ran['requested_precision']}) on {ran['isa']}: "
                         f"{ran['kernels']}; linear weights {ran['linear_weights_mb']:.0f} MB; its peak RSS is "
                         "read before the f32 reference of the cosine is loaded")
    vers = versions()
    ratios = {r["shape"]: r for r in ratio_list}
    rounds_note = f", {args.rounds} rounds" if args.rounds > 1 else ""
    lines.append(f"### {started:%Y-%m-%d %H:%M} — {cpu_name()}, {args.threads} threads, iters {args.iters}{rounds_note}")
    lines.append("")
    lines.append(f"Command: `scripts/bench-compare.sh {shlex.join(sys.argv[1:])}` (task {args.task}, "
                 f"wait policy {args.wait_policy}); "
                 f"load average {args.load_before} before, {load_average()} after.")
    lines.append(
        f"Model: {Path(args.model).name} (hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
        f"vocab {cfg['vocab_size']}); " + ", ".join(f"{k} {v}" for k, v in vers.items())
        + f"; jina-embed {source_state(Path(args.bin))}.")
    lines.append("")
    header = ["shape"] + engines + [f"{o} / {t}" for o, t in RATIOS if o in engines and t in engines]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for shape in shapes:
        s = shape_name(shape)
        row = [s]
        for e in engines:
            r = results.get((e, s))
            if r:
                row.append(f"{r['tokens_per_s']:.1f}")
            elif e not in active:
                row.append("n/a")
            elif f"{e}@{s}" in skip or e in skip:
                row.append("skipped")
            elif (e, s) in failures:
                row.append("failed")
            else:
                row.append("–")
        for o, t in RATIOS:
            if o in engines and t in engines:
                r = ratios[s].get(f"{o}/{t}")
                row.append(f"**{r:.2f}×**" if r else "–")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if args.rounds > 1:
        lines.append("Tokens per second of each engine's median round; each ratio is the median over the rounds of the "
                     "ratio within a round. Per-round ratios: " + "; ".join(
                         f"{s} {k.removesuffix(' (rounds)')} " + ", ".join(f"{v:.2f}" for v in vals)
                         for s, row in ratios.items() for k, vals in row.items() if k.endswith("(rounds)")) + ".")
        lines.append("")
    lines.append("Tokens per second (median of the timed iterations). Peak RSS (MB, whole process, load included):")
    lines.append("")
    lines.append("| shape | " + " | ".join(engines) + " |")
    lines.append("|" + "---|" * (len(engines) + 1))
    for shape in shapes:
        s = shape_name(shape)
        lines.append("| " + s + " | " + " | ".join(
            f"{results[(e, s)]['peak_rss_mb']:.0f}" if (e, s) in results else "–" for e in engines) + " |")
    lines.append("")
    lines.append("Tokens per second from the fastest timed iteration (less sensitive to other load on a shared machine):")
    lines.append("")
    best_ratios = [(o, t) for o, t in RATIOS if o in engines and t in engines]
    if args.rounds > 1:
        lines.append("(each engine's median round; the ratios are medians of the per-round ratios)")
        lines.append("")
    lines.append("| shape | " + " | ".join(engines + [f"{o} / {t}" for o, t in best_ratios]) + " |")
    lines.append("|" + "---|" * (len(engines) + len(best_ratios) + 1))
    for shape in shapes:
        s = shape_name(shape)
        best = {e: results[(e, s)]["batch"] * results[(e, s)]["tokens"] / results[(e, s)]["min_s"]
                for e in engines if (e, s) in results}
        lines.append("| " + s + " | " + " | ".join(
            [f"{best[e]:.1f}" if e in best else "–" for e in engines]
            + [f"{ratios[s][f'{o}/{t} (fastest iteration)']:.2f}×" if f"{o}/{t} (fastest iteration)" in ratios[s] else "–"
               for o, t in best_ratios]) + " |")
    lines.append("")
    if cos_values:
        lines.append("Correctness (smallest cosine over the check texts; torch/ORT against `jina-embed embed` f32 "
                     "unless named): " + "; ".join(f"{k} {v:.6f}" for k, v in cos_values.items()) + ".")
    for (e, s), err in failures.items():
        lines.append(f"- {e} @ {s} failed: {err.splitlines()[-1] if err else ''}")
    for n in notes:
        lines.append(f"- {n}")
    if "ours-bf16" in engines:
        lines.append("- ours-bf16's peak RSS includes the f32 model that `jina-embed bench` also loads to "
                     "compute its cosine to f32.")
    if any(f"{e}@{shape_name(sh)}" in skip for e in engines for sh in shapes):
        lines.append("- skipped by `--skip " + args.skip + "` (ONNX Runtime's exported attention materialises "
                     "the n×n scores: ~21 GB RSS at 1x8192, too close to this machine's 24 GB)")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
