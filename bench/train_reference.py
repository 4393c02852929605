#!/usr/bin/env python3
"""PyTorch ground truth for training a task LoRA adapter (InfoNCE) on the `small` fixture.

Writes crates/engine/tests/fixtures/train-small.json: for each case, the loss, the gradient of
every LoRA tensor of the trainable adapter, and its values after ONE torch.optim.AdamW step, plus
the pooled, L2-normalised embeddings (to pin the forward pass).

    bench/.venv/bin/python bench/train_reference.py                 # writes the JSON
    bench/.venv/bin/python bench/train_reference.py --fd-check      # + float64 finite differences
    bench/.venv/bin/python bench/train_reference.py --verify-fixture /tmp/jina-small \
        --out /tmp/train-small.json                                 # + compare with `jina-embed fixture`

(bench/.venv comes from scripts/bench-compare.sh: torch, tokenizers, numpy.)

The model
---------
The checkpoint is the fixture formula (shared fixtures README: mix64/fnv1a64, bf16), generated
here in numpy (only the embedding rows that the inputs use), so nothing else is needed;
--verify-fixture DIR checks it bit for bit against a folder written by `jina-embed fixture`.
The forward pass is written out explicitly and follows the official code (post-LN XLM-RoBERTa,
NeoX rotary base 20000 from position 0, exact GELU, attention scale 1/8, no dropout):

  * every LoRA delta is added to the weight before use, as the official parametrization does:
    linear  W_eff = W + s * B @ A   (A [r, in], B [out, r]; Wqkv packed, split into q/k/v AFTER)
    embedding E_eff[id] = E[id] + s * A[id] @ B   (A [V, r], B [r, H]); token type likewise with
    its single row; s = lora_alpha / lora_rank = 0.25.
  * pooling: the plain mean over ALL tokens of the sequence (<s>, prefix, text, </s>) in f32;
    each sequence runs on its own (no padding), then truncate to d dims, then L2 normalise
    (x / max(||x||, 1e-12)).
Before writing, the forward pass is checked against crates/engine/tests/fixtures/golden-small.json
(official outputs) and the run fails if any component differs by more than 2e-5.

The loss (sentence-transformers MultipleNegativesRankingLoss, scale 20)
--------------------------------------------------------------------
For dims d in D (D = [full] unless Matryoshka), with q_i, p_i, n_k the pooled embeddings
truncated to d and L2-normalised, B = #queries = #positives, K = #negatives:
    S_fwd[i, j] = scale * q_i . c_j,  c = (p_0..p_{B-1}, n_0..n_{K-1})     [B, B+K]
    L_fwd = mean_i CE(S_fwd[i, :], target i) = mean_i (logsumexp_j S_fwd[i, j] - S_fwd[i, i])
    symmetric: S_bwd[i, j] = scale * p_i . q_j [B, B] (negatives not used),
               L_bwd = mean_i CE(S_bwd[i, :], i),  L_d = (L_fwd + L_bwd) / 2
    otherwise  L_d = L_fwd
    loss = sum_{d in D} L_d      (MatryoshkaLoss with all weights 1)
(exactly sentence-transformers' MultipleNegativesSymmetricRankingLoss for the symmetric half).

Output names: "layers.{l}.{mixer.Wqkv|mixer.out_proj|mlp.fc1|mlp.fc2}.lora_A|lora_B",
"token_type_embeddings.lora_A|lora_B", "word_embeddings.lora_B" and, for the word embeddings' A,
only the rows that the trainable side's sequences use: "word_embeddings.lora_A.rows" (sorted ids)
and "word_embeddings.lora_A" (len(rows) * r values in that row order). Values are flat,
row-major, in the official (checkpoint) shapes. The pooler's LoRA is not trained (it does not
reach the embedding) and is not listed.

AdamW (torch.optim.AdamW, lr 5e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01, first step):
    p <- p * (1 - lr*wd);  m = (1-b1) g;  v = (1-b2) g^2
    p <- p - (lr / (1-b1)) * m / (sqrt(v) / sqrt(1-b2) + eps)
Every row of the word-embedding A is decayed, including rows whose gradient is 0: "updated"
lists the used rows only, and "word_embeddings.lora_A.unused_row_factor" = 1 - lr*wd is what
every other row of A is multiplied by (its gradient is exactly 0, so Adam adds nothing).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "crates/engine/tests/fixtures/train-small.json"
GOLDEN = REPO / "crates/engine/tests/fixtures/golden-small.json"
TOKENIZER = REPO / "assets/xlm-roberta-tokenizer.json.gz"

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15

# The official config (shared docs/jina-v3-spec.md §1) with the `small` overrides.
SHAPES = {"small": {"hidden": 128, "heads": 2, "layers": 2, "intermediate": 256}}
VOCAB = 250002
RANK = 4
LORA_ALPHA = 1
TASKS = ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"]
PREFIXES = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
    "separation": "",
    "classification": "",
    "text-matching": "",
}
ROPE_BASE = 20000.0
LN_EPS = 1e-5

SCALE = 20.0
ADAMW = {"lr": 5e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}

LINEARS = ["mixer.Wqkv", "mixer.out_proj", "mlp.fc1", "mlp.fc2"]

# 4 queries, 4 positives (positive i answers query i), 2 hard negatives.
QUERIES = [
    "What is the capital of France?",
    "Who wrote Hamlet?",
    "boiling point of water",
    "Wie hoch ist der Mount Everest?",
]
POSITIVES = [
    "Paris is the capital of France.",
    "Hamlet was written by William Shakespeare.",
    "Water boils at 100 degrees Celsius.",
    "Der Mount Everest ist 8849 Meter hoch.",
]
NEGATIVES = [
    "Berlin is the capital of Germany.",
    "Ice melts at zero degrees Celsius.",
]

CASES = [
    {"name": "query_side", "from_task": "retrieval.query", "passage_task": "retrieval.passage",
     "symmetric": False, "matryoshka_dims": None},
    {"name": "joint_symmetric_matryoshka", "from_task": "text-matching", "passage_task": None,
     "symmetric": True, "matryoshka_dims": [32, 64, 128]},
]


# --------------------------------------------------------------------------------------------
# The fixture formula (shared fixtures README), vectorised
# --------------------------------------------------------------------------------------------

def mix64_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def mix64_np(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def bf16_round(v: np.ndarray) -> np.ndarray:
    """f32 -> bf16 (round to nearest even) -> f32 (no NaN/inf can occur here)."""
    bits = v.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    return (bits << np.uint64(16)).astype(np.uint32).view(np.float32)


def role(name: str) -> tuple[float, float]:
    if name.endswith("lora_A") or name.endswith("lora_B"):
        return 0.0, 0.2
    if "emb_ln" in name or "norm1" in name or "norm2" in name:
        if name.endswith(".weight"):
            return 1.0, 0.2
        if name.endswith(".bias"):
            return 0.0, 0.05
    if name.endswith(".bias"):
        return 0.0, 0.02
    return 0.0, 0.05


def formula_values(name: str, seed: int, index: np.ndarray) -> np.ndarray:
    """Stored (bf16) value, widened to f32, of the elements `index` (row-major) of `name`."""
    with np.errstate(over="ignore"):
        s0 = mix64_int((seed ^ fnv1a64(name.encode())) & MASK64)
        z = np.uint64(s0) + (index.astype(np.uint64) + np.uint64(1)) * np.uint64(GOLDEN_GAMMA)
        z = mix64_np(z)
    u = (z >> np.uint64(40)).astype(np.float32) / np.float32(16777216.0)
    offset, half = role(name)
    v = np.float32(offset) + (u * np.float32(2.0) - np.float32(1.0)) * np.float32(half)
    return bf16_round(v.astype(np.float32))


class Fixture:
    """The formula checkpoint of one shape and seed; tensors built on demand (f32 numpy)."""

    def __init__(self, shape: str, seed: int):
        self.seed = seed
        s = SHAPES[shape]
        self.hidden, self.heads, self.layers, self.inter = s["hidden"], s["heads"], s["layers"], s["intermediate"]
        h, i = self.hidden, self.inter
        n_tasks = len(TASKS)
        self.shapes = {
            "roberta.embeddings.word_embeddings.parametrizations.weight.original": [VOCAB, h],
            "roberta.embeddings.word_embeddings.parametrizations.weight.0.lora_A": [n_tasks, VOCAB, RANK],
            "roberta.embeddings.word_embeddings.parametrizations.weight.0.lora_B": [n_tasks, RANK, h],
            "roberta.embeddings.token_type_embeddings.parametrizations.weight.original": [1, h],
            "roberta.embeddings.token_type_embeddings.parametrizations.weight.0.lora_A": [n_tasks, 1, RANK],
            "roberta.embeddings.token_type_embeddings.parametrizations.weight.0.lora_B": [n_tasks, RANK, h],
            "roberta.emb_ln.weight": [h],
            "roberta.emb_ln.bias": [h],
        }
        io = {"mixer.Wqkv": (h, 3 * h), "mixer.out_proj": (h, h), "mlp.fc1": (h, i), "mlp.fc2": (i, h)}
        for layer in range(self.layers):
            p = f"roberta.encoder.layers.{layer}"
            for mod, (fan_in, fan_out) in io.items():
                self.shapes[f"{p}.{mod}.parametrizations.weight.original"] = [fan_out, fan_in]
                self.shapes[f"{p}.{mod}.bias"] = [fan_out]
                self.shapes[f"{p}.{mod}.parametrizations.weight.0.lora_A"] = [n_tasks, RANK, fan_in]
                self.shapes[f"{p}.{mod}.parametrizations.weight.0.lora_B"] = [n_tasks, fan_out, RANK]
            for ln in ("norm1", "norm2"):
                self.shapes[f"{p}.{ln}.weight"] = [h]
                self.shapes[f"{p}.{ln}.bias"] = [h]

    def full(self, name: str) -> np.ndarray:
        shape = self.shapes[name]
        n = int(np.prod(shape))
        return formula_values(name, self.seed, np.arange(n, dtype=np.uint64)).reshape(shape)

    def task_slice(self, name: str, task: int) -> np.ndarray:
        """Entry `task` of the leading (adapter) axis of a stacked LoRA tensor."""
        shape = self.shapes[name]
        per = int(np.prod(shape[1:]))
        idx = np.arange(task * per, (task + 1) * per, dtype=np.uint64)
        return formula_values(name, self.seed, idx).reshape(shape[1:])

    def rows(self, name: str, rows: list[int], task: int | None = None) -> np.ndarray:
        """Rows `rows` of a [V, C] table, or of entry `task` of a [T, V, C] table."""
        shape = self.shapes[name]
        cols = shape[-1]
        base = 0 if task is None else task * shape[1] * cols
        r = np.asarray(rows, dtype=np.uint64)[:, None]
        idx = np.uint64(base) + r * np.uint64(cols) + np.arange(cols, dtype=np.uint64)[None, :]
        return formula_values(name, self.seed, idx)


# --------------------------------------------------------------------------------------------
# The model: frozen base + LoRA tensors (explicit forward pass)
# --------------------------------------------------------------------------------------------

class Model:
    """Base weights of the fixture for a fixed set of vocabulary rows (`vocab_rows`)."""

    def __init__(self, fx: Fixture, vocab_rows: list[int], dtype: torch.dtype):
        self.fx, self.dtype = fx, dtype
        self.rows = sorted(set(vocab_rows))
        self.row_of = {t: i for i, t in enumerate(self.rows)}
        self.scaling = LORA_ALPHA / RANK
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dtype)  # noqa: E731
        we = "roberta.embeddings.word_embeddings.parametrizations.weight.original"
        self.base = {
            "word": t(fx.rows(we, self.rows)),
            "type": t(fx.full("roberta.embeddings.token_type_embeddings.parametrizations.weight.original")),
            "emb_ln.weight": t(fx.full("roberta.emb_ln.weight")),
            "emb_ln.bias": t(fx.full("roberta.emb_ln.bias")),
        }
        for layer in range(fx.layers):
            p = f"roberta.encoder.layers.{layer}"
            for mod in LINEARS:
                self.base[f"{layer}.{mod}.weight"] = t(fx.full(f"{p}.{mod}.parametrizations.weight.original"))
                self.base[f"{layer}.{mod}.bias"] = t(fx.full(f"{p}.{mod}.bias"))
            for ln in ("norm1", "norm2"):
                self.base[f"{layer}.{ln}.weight"] = t(fx.full(f"{p}.{ln}.weight"))
                self.base[f"{layer}.{ln}.bias"] = t(fx.full(f"{p}.{ln}.bias"))
        d = fx.hidden // fx.heads
        inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        self.inv_freq = inv_freq.to(torch.float64) if dtype == torch.float64 else inv_freq

    def adapter(self, task: int) -> dict[str, torch.Tensor]:
        """The built-in adapter `task` in our names (word A restricted to self.rows)."""
        fx = self.fx
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.dtype)  # noqa: E731
        we = "roberta.embeddings.word_embeddings.parametrizations.weight.0"
        tt = "roberta.embeddings.token_type_embeddings.parametrizations.weight.0"
        out = {
            "word_embeddings.lora_A": t(fx.rows(f"{we}.lora_A", self.rows, task)),
            "word_embeddings.lora_B": t(fx.task_slice(f"{we}.lora_B", task)),
            "token_type_embeddings.lora_A": t(fx.task_slice(f"{tt}.lora_A", task)),
            "token_type_embeddings.lora_B": t(fx.task_slice(f"{tt}.lora_B", task)),
        }
        for layer in range(fx.layers):
            for mod in LINEARS:
                src = f"roberta.encoder.layers.{layer}.{mod}.parametrizations.weight.0"
                out[f"layers.{layer}.{mod}.lora_A"] = t(fx.task_slice(f"{src}.lora_A", task))
                out[f"layers.{layer}.{mod}.lora_B"] = t(fx.task_slice(f"{src}.lora_B", task))
        return out

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        """NeoX rotate-half rotary on [S, heads, d], positions 0..S-1."""
        s = x.shape[0]
        pos = torch.arange(s, dtype=self.inv_freq.dtype)
        freqs = torch.outer(pos, self.inv_freq)
        cos, sin = freqs.cos().to(x.dtype)[:, None, :], freqs.sin().to(x.dtype)[:, None, :]
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def pooled(self, ids: list[int], lora: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Mean over all tokens of the last hidden state (not normalised), [H]."""
        b, s, fx = self.base, self.scaling, self.fx
        h, nh = fx.hidden, fx.heads
        d = h // nh
        loc = torch.tensor([self.row_of[i] for i in ids])
        x = b["word"][loc]
        tt = b["type"][0]
        if lora is not None:
            x = x + s * (lora["word_embeddings.lora_A"][loc] @ lora["word_embeddings.lora_B"])
            tt = tt + s * (lora["token_type_embeddings.lora_A"][0] @ lora["token_type_embeddings.lora_B"])
        x = F.layer_norm(x + tt, (h,), b["emb_ln.weight"], b["emb_ln.bias"], LN_EPS)

        def weight(layer, mod):
            w = b[f"{layer}.{mod}.weight"]
            if lora is not None:
                w = w + s * (lora[f"layers.{layer}.{mod}.lora_B"] @ lora[f"layers.{layer}.{mod}.lora_A"])
            return w

        n = len(ids)
        for layer in range(fx.layers):
            qkv = x @ weight(layer, "mixer.Wqkv").T + b[f"{layer}.mixer.Wqkv.bias"]
            qkv = qkv.view(n, 3, nh, d)
            q, k, v = self.rope(qkv[:, 0]), self.rope(qkv[:, 1]), qkv[:, 2]
            scores = torch.einsum("snd,tnd->nst", q, k * (d ** -0.5))
            p = torch.softmax(scores, dim=-1)
            ctx = torch.einsum("nst,tnd->snd", p, v).reshape(n, h)
            a = ctx @ weight(layer, "mixer.out_proj").T + b[f"{layer}.mixer.out_proj.bias"]
            x = F.layer_norm(a + x, (h,), b[f"{layer}.norm1.weight"], b[f"{layer}.norm1.bias"], LN_EPS)
            m = F.gelu(x @ weight(layer, "mlp.fc1").T + b[f"{layer}.mlp.fc1.bias"])
            m = m @ weight(layer, "mlp.fc2").T + b[f"{layer}.mlp.fc2.bias"]
            x = F.layer_norm(m + x, (h,), b[f"{layer}.norm2.weight"], b[f"{layer}.norm2.bias"], LN_EPS)
        return x.mean(dim=0)

    def encode(self, seqs: list[list[int]], lora) -> torch.Tensor:
        return torch.stack([self.pooled(ids, lora) for ids in seqs])


def truncate_normalize(e: torch.Tensor, dims: int | None) -> torch.Tensor:
    if dims is not None:
        e = e[..., :dims]
    return F.normalize(e, p=2.0, dim=-1, eps=1e-12)


def infonce(q, p, n, dims: list[int], symmetric: bool, scale: float = SCALE) -> torch.Tensor:
    """MultipleNegativesRankingLoss (+ symmetric half, + Matryoshka sum): see the module doc."""
    labels = torch.arange(q.shape[0])
    total = q.new_zeros(())
    for d in dims:
        qd, pd, nd = truncate_normalize(q, d), truncate_normalize(p, d), truncate_normalize(n, d)
        fwd = F.cross_entropy(scale * qd @ torch.cat([pd, nd]).T, labels)
        if symmetric:
            bwd = F.cross_entropy(scale * pd @ qd.T, labels)
            total = total + (fwd + bwd) / 2
        else:
            total = total + fwd
    return total


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

def load_tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(gzip.open(TOKENIZER).read().decode("utf-8"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def tokenize(tok, texts: list[str], task: str) -> list[list[int]]:
    return [tok.encode(PREFIXES[task] + t).ids for t in texts]


class Case:
    def __init__(self, spec: dict, tok, fx: Fixture):
        self.spec = spec
        qtask = spec["from_task"]
        ptask = spec["passage_task"] or qtask
        self.train_idx = TASKS.index(qtask)
        self.passage_idx = None if spec["passage_task"] is None else TASKS.index(spec["passage_task"])
        self.queries = tokenize(tok, QUERIES, qtask)
        self.positives = tokenize(tok, POSITIVES, ptask)
        self.negatives = tokenize(tok, NEGATIVES, ptask)
        for seq in self.queries + self.positives + self.negatives:
            assert seq[0] == 0 and seq[-1] == 2 and 6 <= len(seq) <= 40, (len(seq), seq)
        self.dims = spec["matryoshka_dims"] or [fx.hidden]
        every = self.queries + self.positives + self.negatives
        self.vocab_rows = sorted({i for s in every for i in s})
        trainable_seqs = self.queries if self.passage_idx is not None else every
        self.used_rows = sorted({i for s in trainable_seqs for i in s})

    def loss(self, model: Model, params: dict, frozen: dict | None):
        q = model.encode(self.queries, params)
        side = params if frozen is None else frozen
        if frozen is None:
            p, n = model.encode(self.positives, side), model.encode(self.negatives, side)
        else:
            with torch.no_grad():
                p, n = model.encode(self.positives, side), model.encode(self.negatives, side)
        return infonce(q, p, n, self.dims, self.spec["symmetric"]), (q, p, n)

    def setup(self, fx: Fixture, dtype: torch.dtype):
        model = Model(fx, self.vocab_rows, dtype)
        params = {k: v.clone().requires_grad_(True) for k, v in model.adapter(self.train_idx).items()}
        frozen = None if self.passage_idx is None else model.adapter(self.passage_idx)
        return model, params, frozen


def sig9(x: float) -> float:
    return float(f"{x:.9g}")


def flat(t: torch.Tensor) -> list[float]:
    return [sig9(v) for v in t.detach().to(torch.float64).reshape(-1).tolist()]


def export_tensors(tensors: dict[str, torch.Tensor], model: Model, used_rows: list[int]) -> dict:
    out = {}
    for name, t in tensors.items():
        if name == "word_embeddings.lora_A":
            out[name] = flat(t[torch.tensor([model.row_of[r] for r in used_rows])])
        else:
            out[name] = flat(t)
    out["word_embeddings.lora_A.rows"] = list(used_rows)
    return dict(sorted(out.items()))


def run_case(case: Case, fx: Fixture, fd_check: bool) -> dict:
    model, params, frozen = case.setup(fx, torch.float32)
    loss, (q, p, n) = case.loss(model, params, frozen)
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in params.items()}

    names = list(params)
    opt = torch.optim.AdamW([params[k] for k in names], lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]),
                            eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"], foreach=False)
    before = {k: v.detach().clone() for k, v in params.items()}
    opt.step()
    updated = {k: v.detach().clone() for k, v in params.items()}
    # Sanity: the decay-only factor on rows whose gradient is 0.
    unused = [i for i, r in enumerate(model.rows) if r not in set(case.used_rows)]
    if unused:
        factor = 1.0 - ADAMW["lr"] * ADAMW["weight_decay"]
        a0 = before["word_embeddings.lora_A"][unused]
        a1 = updated["word_embeddings.lora_A"][unused]
        assert torch.equal(grads["word_embeddings.lora_A"][unused], torch.zeros_like(a0))
        assert torch.allclose(a1, a0 * factor, rtol=0, atol=1e-9)

    # Reference of the reference: the same gradients in float64.
    m64, p64, f64 = case.setup(fx, torch.float64)
    loss64, _ = case.loss(m64, p64, f64)
    loss64.backward()
    g64 = {k: v.grad for k, v in p64.items()}
    worst_abs, worst_rel = 0.0, 0.0
    for k in names:
        diff = (grads[k].double() - g64[k]).abs().max().item()
        scale = g64[k].abs().max().item()
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(scale, 1e-30))
    log(f"[{case.spec['name']}] loss f32 {loss.item():.9g}, f64 {loss64.item():.12g}; "
        f"grad f32 vs f64: max abs {worst_abs:.3g}, max (abs / tensor's max |g|) {worst_rel:.3g}")

    fd = None
    if fd_check:
        fd = finite_differences(case, m64, p64, f64, g64)

    result = {
        "name": case.spec["name"],
        "from_task": case.spec["from_task"],
        "passage_task": case.spec["passage_task"],
        "symmetric": case.spec["symmetric"],
        "matryoshka_dims": case.spec["matryoshka_dims"],
        "queries": case.queries,
        "positives": case.positives,
        "negatives": case.negatives,
        "query_embeddings": [flat(r) for r in truncate_normalize(q, None)],
        "positive_embeddings": [flat(r) for r in truncate_normalize(p, None)],
        "negative_embeddings": [flat(r) for r in truncate_normalize(n, None)],
        "loss": loss.item(),
        "loss_f64": loss64.item(),
        "grad_f32_vs_f64_max_abs": sig9(worst_abs),
        "grads": export_tensors(grads, model, case.used_rows),
        "updated": export_tensors(updated, model, case.used_rows),
    }
    result["updated"]["word_embeddings.lora_A.unused_row_factor"] = 1.0 - ADAMW["lr"] * ADAMW["weight_decay"]
    if fd is not None:
        result["finite_difference_max_rel_err"] = sig9(fd)
    return result


def finite_differences(case: Case, model: Model, params: dict, frozen, grads: dict, h: float = 1e-4) -> float:
    """Central differences in float64 on a few elements of every tensor (largest |g| + random)."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for name, p in params.items():
        g = grads[name].reshape(-1)
        picks = set(torch.topk(g.abs(), 2).indices.tolist())
        picks |= set(torch.randint(0, g.numel(), (2,), generator=gen).tolist())
        for idx in sorted(picks):
            flat_p = p.detach().view(-1)
            orig = flat_p[idx].item()
            with torch.no_grad():
                flat_p[idx] = orig + h
                lp = case.loss(model, params, frozen)[0].item()
                flat_p[idx] = orig - h
                lm = case.loss(model, params, frozen)[0].item()
                flat_p[idx] = orig
            num = (lp - lm) / (2 * h)
            ana = g[idx].item()
            # Relative to the element, floored at 1% of the tensor's largest gradient: for a
            # near-zero element the difference quotient's own rounding (~1e-16 / h) dominates.
            err = abs(num - ana) / max(abs(ana), abs(num), 1e-2 * g.abs().max().item(), 1e-12)
            worst = max(worst, err)
            if err > 1e-5:
                log(f"  {name}[{idx}]: numeric {num:.6e} analytic {ana:.6e} (max |g| {g.abs().max().item():.3e})")
    log(f"[{case.spec['name']}] finite differences (float64, h={h}): max relative error {worst:.3g}")
    if worst > 1e-5:
        raise SystemExit(f"finite-difference check failed: {worst}")
    return worst


# --------------------------------------------------------------------------------------------
# Checks of the forward pass and of the fixture
# --------------------------------------------------------------------------------------------

def check_golden(fx: Fixture, tok) -> float:
    """The forward pass against the official outputs (golden-small.json, non-late cases)."""
    golden = json.loads(GOLDEN.read_text())
    assert golden["seed"] == fx.seed and golden["variant"] == "small"
    cases = [c for c in golden["cases"] if not c["late_chunking"]]
    seqs = {}
    for c in cases:
        prefix = PREFIXES[c["task"]] if c["task"] else ""
        seqs[id(c)] = [tok.encode(prefix + t).ids for t in c["input"]]
        assert [len(s) for s in seqs[id(c)]] == c["tokens"]
    model = Model(fx, [i for s in seqs.values() for x in s for i in x], torch.float32)
    adapters = {}
    worst = 0.0
    with torch.no_grad():
        for c in cases:
            lora = None
            if c["task"]:
                idx = TASKS.index(c["task"])
                lora = adapters.setdefault(idx, model.adapter(idx))
            e = model.encode(seqs[id(c)], lora)
            if c["dimensions"]:
                e = e[:, :c["dimensions"]]
            want = torch.tensor(c["embeddings"], dtype=torch.float64)
            if c["normalized"]:
                got = truncate_normalize(e, None).double()
                err = (got - want).abs().max().item()
            else:
                got = e.double()
                err = ((got - want).abs().max(dim=1).values / want.norm(dim=1)).max().item()
            worst = max(worst, err)
            if err > 1e-5:
                log(f"  {name}[{idx}]: numeric {num:.6e} analytic {ana:.6e} (max |g| {g.abs().max().item():.3e})")
            if err > 2e-5:
                raise SystemExit(f"forward pass differs from golden case task={c['task']} dims={c['dimensions']}: {err}")
    log(f"[golden] {len(cases)} official cases match, max |diff| {worst:.3g} (tolerance 2e-5)")
    return worst


def verify_fixture(fx: Fixture, folder: Path) -> None:
    """Every tensor of `folder`/model.safetensors (written by `jina-embed fixture`) equals the
    formula here, bit for bit (the two large embedding tables on 4096 random rows)."""
    from safetensors import safe_open

    rng = np.random.default_rng(0)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        wanted = {k for k in fx.shapes}
        missing = wanted - keys
        if missing:
            raise SystemExit(f"{folder}: missing {sorted(missing)[:5]}")
        for name in sorted(wanted):
            t = f.get_tensor(name).float().numpy()
            if list(t.shape) != fx.shapes[name]:
                raise SystemExit(f"{name}: shape {t.shape} != {fx.shapes[name]}")
            if "word_embeddings" in name and name.endswith(("original", "lora_A")):
                rows = sorted(set(rng.integers(0, VOCAB, 4096).tolist()) | {0, 1, 2, VOCAB - 1})
                if name.endswith("original"):
                    ok = np.array_equal(t[rows], fx.rows(name, rows))
                else:
                    ok = all(np.array_equal(t[k][rows], fx.rows(name, rows, k)) for k in range(len(TASKS)))
            else:
                ok = np.array_equal(t, fx.full(name))
            if not ok:
                raise SystemExit(f"{name}: values differ from the fixture formula")
    log(f"[fixture] {len(fx.shapes)} tensors of {folder} equal the formula (pooler not compared)")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------

def dump(obj) -> str:
    """JSON with one line per case field / tensor (readable diffs, small file)."""
    def enc(v):
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)

    lines = ["{"]
    top = [k for k in obj if k != "cases"]
    for k in top:
        lines.append(f"  {enc(k)}: {enc(obj[k])},")
    lines.append('  "cases": [')
    for ci, case in enumerate(obj["cases"]):
        lines.append("    {")
        items = list(case.items())
        for i, (k, v) in enumerate(items):
            comma = "," if i + 1 < len(items) else ""
            if isinstance(v, dict):
                lines.append(f"      {enc(k)}: {{")
                sub = list(v.items())
                for j, (kk, vv) in enumerate(sub):
                    lines.append(f"        {enc(kk)}: {enc(vv)}" + ("," if j + 1 < len(sub) else ""))
                lines.append("      }" + comma)
            else:
                lines.append(f"      {enc(k)}: {enc(v)}{comma}")
        lines.append("    }" + ("," if ci + 1 < len(obj["cases"]) else ""))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON to write (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fd-check", action="store_true", help="also check autograd with float64 finite differences")
    ap.add_argument("--verify-fixture", metavar="DIR", help="check the formula against `jina-embed fixture --out DIR`")
    args = ap.parse_args()

    torch.set_num_threads(1)  # deterministic reductions, and the machine is shared
    torch.manual_seed(0)
    fx = Fixture("small", args.seed)
    if args.verify_fixture:
        verify_fixture(fx, Path(args.verify_fixture))
    tok = load_tokenizer()
    golden_err = check_golden(fx, tok)

    cases = [run_case(Case(spec, tok, fx), fx, args.fd_check) for spec in CASES]
    out = {
        "description": (
            "PyTorch ground truth for training a task LoRA adapter with InfoNCE "
            "(sentence-transformers MultipleNegativesRankingLoss) on the `small` fixture checkpoint (seed 1), "
            "float32, dropout 0. Made by `bench/.venv/bin/python bench/train_reference.py` (see its docstring for "
            "the exact forward pass, loss and AdamW formulas). Per case: queries go through the trainable adapter "
            "(initialised from `from_task`); positives and negatives go through the FROZEN `passage_task` adapter "
            "(no gradient) or, when it is null, through the trainable adapter too. Inputs are token ids "
            "(<s>=0 ... </s>=2, the task prefix of config.json task_instructions tokenised with the text: "
            "retrieval.query's for queries and retrieval.passage's for passages in query_side; text-matching has "
            "none). Each sequence runs alone (no padding); pooling = mean over all its tokens in f32, then "
            "truncate to d dims, then L2 normalise. Loss = sum over d in matryoshka_dims (or [hidden] when null) "
            "of L_d; L_d = mean_i CE(scale * q_i . [p_0..p_3, n_0, n_1], target i) and, when symmetric, "
            "L_d = (that + mean_i CE(scale * p_i . [q_0..q_3], target i)) / 2. grads/updated: flat row-major f32 "
            "in the official shapes (linear A [r, in], B [out, r], delta W = 0.25 * B @ A on the packed Wqkv; "
            "embeddings A [rows, r], B [r, hidden], delta E = 0.25 * A @ B); word_embeddings.lora_A holds only "
            "the rows in word_embeddings.lora_A.rows (the ids of the sequences that go through the trainable "
            "adapter), in that order. updated = after ONE torch.optim.AdamW step (decoupled weight decay applied "
            "to every element: p *= 1 - lr*wd, then the Adam step; first-step bias corrections). AdamW decays "
            "every row of the word-embedding A, also the unused ones: their new value is old * "
            "word_embeddings.lora_A.unused_row_factor (= 1 - lr*wd), their gradient being exactly 0. "
            "query/positive/negative_embeddings: pooled, L2-normalised, full dims, before the step. "
            "loss: f32 value (loss_f64: the same computed in float64); grad_f32_vs_f64_max_abs: the largest "
            "|f32 - f64| over all gradient elements, a floor for any f32 implementation's tolerance. "
            f"The forward pass matched golden-small.json's official outputs to {golden_err:.2g} (max |diff|). "
            "Floats are rounded to 9 significant digits."
        ),
        "fixture": {"shape": "small", "seed": args.seed},
        "scale": SCALE,
        "adamw": ADAMW,
        "lora": {"rank": RANK, "alpha": LORA_ALPHA, "scaling": LORA_ALPHA / RANK},
        "versions": {"torch": torch.__version__},
        "cases": cases,
    }
    text = dump(out)
    json.loads(text)  # well-formed
    Path(args.out).write_text(text)
    log(f"[out] {args.out} ({len(text) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
