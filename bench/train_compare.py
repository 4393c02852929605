#!/usr/bin/env python3
"""Training throughput and memory: `jina-embed train` against PyTorch + PEFT doing the same
training on the same CPU, in one invocation.

Both sides train a rank-4 LoRA (alpha 1, scaling 0.25) on the six sites of every block (q, k,
v, o, fc1, fc2) and the word and token-type embeddings, query side only, starting from
retrieval.query, with sentence-transformers' MultipleNegativesRankingLoss (scale 20, in-batch
negatives), AdamW (lr 5e-4, weight decay 0.01), the same batch of B pairs of T-token queries
(every query text is long enough to be cut to exactly T tokens), the same threads.

  ours   `jina-embed train` (report: pairs/s over its steps; peak RSS of the process).
  torch  transformers' native JinaEmbeddingsV3Model (sdpa attention) with the fixture's weights
         and retrieval.query's LoRA merged (bench/compare.py's loader), a PEFT LoraConfig on
         top (B zero: the same starting function), autograd, torch.optim.AdamW. The frozen
         passage vectors are computed once before the timed steps under the same model with
         the adapter disabled (ours: under retrieval.passage; the cost is the same).

Each engine runs in its own subprocess (peak RSS its own, load included); the ratio is taken
within one invocation, so both ran on the same machine state. The CPU is printed.

    bench/.venv/bin/python bench/train_compare.py --model /tmp/jina-full --batch 64 --tokens 128 \
        --steps 3 --threads 2

(bench/.venv: scripts/bench-compare.sh makes it; a full-size fixture: `jina-embed fixture
--variant full --out /tmp/jina-full`.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = ("the court held that a contract signed under duress is void and the party may recover "
         "damages for any loss caused by the breach of the agreement between both sides").split()


def pairs(n: int, tokens: int) -> list[dict]:
    """n pairs whose every query and passage is long enough to be cut at `tokens` tokens."""
    out = []
    for i in range(n):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(tokens + 8)]
        out.append({"query": f"case {i}: " + " ".join(words), "positive": f"ruling {i}: " + " ".join(reversed(words))})
    return out


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run_ours(args, data: Path) -> dict:
    out = Path(tempfile.mkdtemp(prefix="train-bench-")) / "adapter"
    cmd = [args.bin, "train", "--model", args.model, "--data", str(data), "--name", "bench.query",
           "--out", str(out), "--from", "retrieval.query", "--batch", str(args.batch),
           "--max-tokens", str(args.tokens), "--lr", "5e-4", "--threads", str(args.threads),
           "--max-grad-norm", "0", "--warmup", "0", "--quiet"]
    started = time.time()
    proc = subprocess.run(["/usr/bin/env", "python3", "-c",
                           "import resource,subprocess,sys,json;"
                           "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
                           "sys.stderr.write(p.stderr);"
                           "print(json.dumps({'rc':p.returncode,'stdout':p.stdout,"
                           "'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))", *cmd],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"ours failed: {proc.stderr}")
    wrapped = json.loads(proc.stdout)
    if wrapped["rc"] != 0:
        raise SystemExit(f"jina-embed train failed: {proc.stderr}")
    report = json.loads(wrapped["stdout"].strip().splitlines()[-1])
    return {"pairs_per_second": report["pairs_per_second"], "peak_rss_mb": wrapped["rss"],
            "step_seconds": report["seconds"] / max(report["steps"], 1), "wall": time.time() - started}


def worker_torch(args) -> None:
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer

    from compare import load_torch_model, read_config

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model)
    cfg = read_config(model_dir)
    model = load_torch_model(model_dir, "retrieval.query", "f32")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "word_embeddings", "token_type_embeddings"]
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=1, lora_dropout=0.0, target_modules=targets))
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prefix_q = cfg.get("task_instructions", {}).get("retrieval.query", "")
    prefix_p = cfg.get("task_instructions", {}).get("retrieval.passage", "")

    def ids_of(texts, prefix):
        rows = []
        for t in texts:
            ids = tok.encode(prefix + t).ids
            if len(ids) > args.tokens:
                ids = ids[: args.tokens - 1] + [cfg.get("eos_token_id", 2)]
            rows.append(ids)
        width = max(len(r) for r in rows)
        pad = cfg.get("pad_token_id", 1)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return ids, mask

    def pooled(ids, mask):
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1)

    data = pairs(args.batch * args.steps, args.tokens)
    with torch.no_grad(), model.disable_adapter():
        passages = []
        for s in range(args.steps):
            chunk = data[s * args.batch:(s + 1) * args.batch]
            passages.append(F.normalize(pooled(*ids_of([p["positive"] for p in chunk], prefix_p)), dim=-1))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.01)
    started = time.perf_counter()
    for s in range(args.steps):
        chunk = data[s * args.batch:(s + 1) * args.batch]
        q = F.normalize(pooled(*ids_of([p["query"] for p in chunk], prefix_q)), dim=-1)
        loss = F.cross_entropy(20.0 * q @ passages[s].T, torch.arange(len(chunk)))
        loss.backward()
        opt.step()
        opt.zero_grad()
    seconds = time.perf_counter() - started
    print(json.dumps({"pairs_per_second": args.batch * args.steps / seconds, "peak_rss_mb": peak_rss_mb(),
                      "step_seconds": seconds / args.steps}))


def run_torch(args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "torch", "--model", args.model, "--batch", str(args.batch),
           "--tokens", str(args.tokens), "--steps", str(args.steps), "--threads", str(args.threads)]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"torch failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", default=str(REPO / "target/release/jina-embed"))
    ap.add_argument("--engines", default="ours,torch")
    ap.add_argument("--worker")
    args = ap.parse_args()
    if args.worker == "torch":
        worker_torch(args)
        return 0
    print(f"CPU: {cpu_name()}, {args.threads} threads; batch {args.batch} pairs x {args.tokens} tokens, "
          f"{args.steps} steps", flush=True)
    data = Path(tempfile.mkdtemp(prefix="train-bench-data-")) / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs(args.batch * args.steps, args.tokens)))
    results = {}
    for engine in args.engines.split(","):
        results[engine] = run_ours(args, data) if engine == "ours" else run_torch(args)
        r = results[engine]
        print(f"{engine:6} {r['pairs_per_second']:8.2f} pairs/s  {r['step_seconds']:8.1f} s/step  "
              f"peak RSS {r['peak_rss_mb']:8.0f} MiB", flush=True)
    if "ours" in results and "torch" in results:
        o, t = results["ours"], results["torch"]
        print(f"ours / torch: {o['pairs_per_second'] / t['pairs_per_second']:.2f}x pairs/s, "
              f"{o['peak_rss_mb'] / t['peak_rss_mb']:.2f}x peak RSS")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
