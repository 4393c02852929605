"""Fake-quantise a checkpoint folder's linear weights, to measure what a weight format would cost.

Writes a copy of the folder whose Wqkv, out_proj, fc1 and fc2 weights (`...weight.original`; the
LoRA factors, embeddings and norms untouched) are rounded to a symmetric integer grid and back
to bf16. Embedding texts with `jina-embed embed --precision f32` on the copy and on the original
then gives the cosine cost of the weights' rounding alone (activations stay f32):

    bench/.venv/bin/python bench/fake_quantize.py /tmp/full /tmp/full-q channel:127
    jina-embed embed --model /tmp/full   --input texts.txt --output ref.npy
    jina-embed embed --model /tmp/full-q --input texts.txt --output q.npy

MODE is `channel:LEVELS` (one scale per output channel, values within +-LEVELS: 127 is the int8
path's weights, 63 seven bits) or `group:LEVELS:INPUTS` (one scale per INPUTS consecutive inputs
of each output channel). docs/benchmarks.md, 2026-12-03 (eighth session), has the results.
"""
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

LINEARS = ("Wqkv", "out_proj", "fc1", "fc2")


def fake_quantize(w: torch.Tensor, levels: int, group: int | None) -> torch.Tensor:
    n, k = w.shape
    blocks = w.reshape(n, k // group, group) if group else w.reshape(n, 1, k)
    scale = blocks.abs().amax(dim=2, keepdim=True).clamp_min(1e-30) / levels
    return (torch.round(blocks / scale).clamp(-levels, levels) * scale).reshape(n, k)


def main() -> None:
    src, dst, mode = sys.argv[1:4]
    kind, *numbers = mode.split(":")
    levels = int(numbers[0])
    group = int(numbers[1]) if kind == "group" else None
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name != "model.safetensors":
            shutil.copy(os.path.join(src, name), dst)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    names = [k for k in tensors if k.endswith("weight.original") and any(s in k for s in LINEARS)]
    for k in names:
        tensors[k] = fake_quantize(tensors[k].float(), levels, group).to(torch.bfloat16)
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    print(f"{mode}: {len(names)} weights rounded, written to {dst}")


if __name__ == "__main__":
    main()
