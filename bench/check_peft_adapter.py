#!/usr/bin/env python3
"""Loads an adapter folder written by `jina-embed train` with the real `transformers` and `peft`
packages, and checks that their vectors for the new task equal ours.

The base is transformers' native `JinaEmbeddingsV3Model` with the checkpoint's weights and no
task merged (bench/compare.py's loader, task `none`); `peft.PeftModel.from_pretrained(base,
ADAPTER)` puts our LoRA on its q/k/v/o/fc1/fc2 projections and its embeddings; each text is
prefixed with the adapter's instruction (jina_adapter.json), mean-pooled over all its tokens and
L2-normalised, as the official code does. Ours: `jina-embed embed --adapter ADAPTER --task NAME`.

    bench/.venv/bin/python bench/check_peft_adapter.py --model /tmp/jina-small --adapter adapters/x

Exit 1 when a component differs by more than --tolerance (2e-5, the fixtures' f32 tolerance).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

TEXTS = [
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
    "Der Mount Everest ist 8849 Meter hoch.",
    "東京は日本の首都です",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--bin", default=str(REPO / "target/release/jina-embed"))
    ap.add_argument("--tolerance", type=float, default=2e-5)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from tokenizers import Tokenizer

    from compare import load_torch_model

    meta = json.loads((Path(args.adapter) / "jina_adapter.json").read_text())
    name, prefix = meta["name"], meta["prefix"]
    base = load_torch_model(Path(args.model), "none", "f32")
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    tok = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    theirs = []
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([tok.encode(prefix + text).ids])
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            theirs.append(F.normalize(hidden.mean(1), dim=-1)[0])
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "texts.jsonl", Path(tmp) / "vectors.jsonl"
        src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
        subprocess.run([args.bin, "embed", "--model", args.model, "--adapter", f"{name}={args.adapter}",
                        "--task", name, "--input", str(src), "--output", str(dst), "--quiet"], check=True)
        ours = [json.loads(line)["embedding"] for line in dst.read_text().splitlines()]
    worst = max(float((torch.tensor(o) - t).abs().max()) for o, t in zip(ours, theirs))
    # The adapter must matter: the base alone gives other vectors.
    with torch.no_grad(), model.disable_adapter():
        ids = torch.tensor([tok.encode(prefix + TEXTS[0]).ids])
        plain = F.normalize(model(input_ids=ids).last_hidden_state.mean(1), dim=-1)[0]
    moved = float((plain - theirs[0]).abs().max())
    print(f"{name}: transformers + peft vs jina-embed, max |diff| {worst:.2e} over {len(TEXTS)} texts "
          f"(tolerance {args.tolerance}); the adapter moves the vector by {moved:.2e}")
    return 0 if worst <= args.tolerance and moved > 10 * args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
