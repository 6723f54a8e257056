"""Benchmark: tokenization throughput (images/s, tokens/s) at 256/336/448 px.

Trains the default-sized VQ-VAE briefly on crops of real wheel photos (training quality does not
change the encode cost), then encodes batches of real photos centre-cropped to each resolution,
on CUDA when present, else the CPU.

Usage: .venv/bin/python bench/tokens.py [--images 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataplatform.core.tokens.crop_policy import apply, plan  # noqa: E402

SKIMAGE = Path(__import__("skimage").__file__).parent / "data"


def photos() -> list[Image.Image]:
    out = []
    for path in sorted(SKIMAGE.glob("*.png")) + sorted(SKIMAGE.glob("*.jpg")):
        with Image.open(path) as im:
            if min(im.size) >= 256 and getattr(im, "n_frames", 1) == 1:
                out.append(im.convert("RGB"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    import torch

    from dataplatform.core.tokens.vq_tokenizer import VQConfig, train_vqvae

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = photos()
    crops = np.stack([np.asarray(apply(im, plan(*im.size, 64, "center"), 64)) for im in base])
    config = VQConfig(resolution=64, downsample=8, codebook_size=512, channels=32)
    tokenizer = train_vqvae(crops, config, steps=20, device=device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {len(base)} photos")
    for resolution in (256, 336, 448):
        batch = np.stack(
            [
                np.asarray(
                    apply(
                        base[i % len(base)],
                        plan(*base[i % len(base)].size, resolution, "center"),
                        resolution,
                    )
                )
                for i in range(args.images)
            ]
        )
        tokenizer.encode(batch[:4])  # warm-up
        start = time.perf_counter()
        grids = tokenizer.encode(batch)
        seconds = time.perf_counter() - start
        per_image = grids[0].size
        print(
            f"  {resolution} px: {args.images / seconds:7.1f} images/s, "
            f"{args.images * per_image / seconds:9.0f} tokens/s ({per_image} tokens per image)"
        )


if __name__ == "__main__":
    main()
