"""PyTorch on a CUDA GPU, the baseline of scripts/bench-gpu.sh: the model `bench/compare.py`
builds (transformers' JinaEmbeddingsV3Model, sdpa, weights from our safetensors, the task's LoRA
merged), moved to the GPU, timed on the same synthetic inputs of exact lengths as
`jina-embed bench` (<s>, pseudo-random ids, </s>). One JSON line per shape and dtype.

f32 runs with TF32 off (PyTorch's default for matmul; said in the output), the comparison for our
f32 shaders; bf16 is shown beside it for what tensor cores give.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--shapes", default="8x128,4x512,1x8192")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--task", default="text-matching")
    ap.add_argument("--dtypes", default="f32,bf16")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"error": "torch.cuda.is_available() is False"}))
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = torch.cuda.get_device_name(0)
    for dtype_name in args.dtypes.split(","):
        model = compare.load_torch_model(Path(args.model), args.task, dtype_name).cuda().eval()
        vocab = model.config.vocab_size
        with torch.inference_mode():
            for b, n in compare.parse_shapes(args.shapes):
                ids = torch.tensor([compare.synthetic_ids(i, n, vocab) for i in range(b)], dtype=torch.long).cuda()
                mask = torch.ones_like(ids)

                def run():
                    compare.pooled(model, ids, mask)
                    torch.cuda.synchronize()

                run()
                times = []
                for _ in range(max(args.iters, 1)):
                    t0 = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t0)
                times.sort()
                median = times[len(times) // 2]
                print(json.dumps({
                    "engine": f"torch-cuda-{dtype_name}", "gpu": gpu, "shape": f"{b}x{n}",
                    "tokens_per_s": b * n / median, "median_s": median, "min_s": times[0],
                    "tf32": False, "max_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
                }), flush=True)
        del model
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
