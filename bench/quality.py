"""Benchmark: images/s of each quality scorer on this machine's CPU (and CUDA when present).

Real photos from the scikit-image and scikit-learn wheels, resized to about 1 MP and repeated
to --images. NudeNet and RapidOCR run their real ONNX models; the watermark network runs the
LAION architecture on random weights (speed does not depend on the weights); the aesthetic
head runs the real LAION ViT-B/32 linear head from ../shared/peerdata when present.

Usage: .venv/bin/python bench/quality.py [--images 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataplatform.core.scoring.technical_quality import technical_scores  # noqa: E402

SKIMAGE = Path(__import__("skimage").__file__).parent / "data"
SKLEARN = Path(__import__("sklearn").__file__).parent / "datasets" / "images"
HEAD = ROOT.parent / "shared" / "peerdata" / "laion-heads" / "LAION-AI_aesthetic-predictor"


def photos(n: int) -> list[Image.Image]:
    files = (
        sorted(SKIMAGE.glob("*.png"))
        + sorted(SKIMAGE.glob("*.jpg"))
        + sorted(SKLEARN.glob("*.jpg"))
    )
    base = []
    for path in files:
        with Image.open(path) as im:
            if min(im.size) < 128 or getattr(im, "n_frames", 1) > 1:
                continue
            rgb = im.convert("RGB")
        scale = (1_000_000 / (rgb.width * rgb.height)) ** 0.5
        base.append(rgb.resize((int(rgb.width * scale), int(rgb.height * scale)), Image.LANCZOS))
    return [base[i % len(base)] for i in range(n)]


def timed(label: str, n: int, fn) -> None:
    fn()  # warm-up: model load and first-call costs are not throughput
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    print(f"  {label:<38} {n / seconds:8.1f} images/s  ({seconds:.2f}s for {n})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args()
    images = photos(args.images)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"{len(images)} photos of ~1 MP, torch threads {torch.get_num_threads()}, device {device}"
    )

    timed(
        "technical (blur, exposure, size)",
        len(images),
        lambda: [technical_scores(im) for im in images],
    )

    from dataplatform.core.scoring.nsfw_nudenet import load_nudenet
    from dataplatform.core.scoring.ocr_readability import load_ocr

    nudenet = load_nudenet()
    timed("NudeNet 320n (ONNX, CPU)", len(images), lambda: nudenet.score(images))
    ocr = load_ocr()
    timed("RapidOCR det+rec (ONNX, CPU)", len(images), lambda: ocr.read(images))

    from dataplatform.core.scoring.watermark_model import build_watermark_model, load_watermark

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "watermark_random.pt"
        torch.save(build_watermark_model().state_dict(), checkpoint)
        watermark = load_watermark(checkpoint, device)
        timed(f"watermark efficientnet_b3 ({device})", len(images), lambda: watermark.score(images))

    head_path = HEAD / "sa_0_4_vit_b_32_linear.pth"
    if head_path.is_file():
        from dataplatform.core.scoring.embedding_heads import load_head

        head = load_head(head_path)
        emb = np.random.default_rng(0).normal(size=(100_000, 512)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        timed("LAION aesthetic head (embeddings)", len(emb), lambda: head.score(emb))
    else:
        print(f"  aesthetic head: {head_path} absent, skipped")


if __name__ == "__main__":
    main()
