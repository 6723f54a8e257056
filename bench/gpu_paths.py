"""GPU code paths against the CPU: CLIP (fp16 on CUDA) and the VQ tokenizer give the same answers.

Run on a machine with CUDA. Random-weight ViT-B-32 saved to a checkpoint and loaded through
`load_encoder` (the production path) on the CPU in fp32 and on CUDA in the auto precision (fp16);
the embeddings must agree to cosine >= 0.99 and the CLIP scores to 0.01. A VQ-VAE trained on the
CPU is saved, loaded on CUDA through `load_tokenizer`, and must give the same token ids for at
least 99% of positions (fp32 on both; argmin ties can flip a few). The watermark detector
(efficientnet_b3, random weights saved and loaded through `load_watermark`) must score within
0.01 on both devices.

Usage: python bench/gpu_paths.py [--images 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.clip import synthetic_images  # noqa: E402
from dataplatform.core.scoring.clip_model import ClipSpec, clip_scores, load_encoder  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    import open_clip
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare")
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    landing, locations = synthetic_images(args.images)
    texts = [f"a photo number {k}" for k in range(len(locations))]
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        network, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        checkpoint = Path(tmp) / "vitb32-random.pt"
        torch.save(network.state_dict(), checkpoint)
        del network
        results = {}
        for device in ("cpu", "cuda"):
            spec = ClipSpec(pretrained=str(checkpoint), device=device, num_workers=2)
            encoder = load_encoder(spec)
            started = time.perf_counter()
            images, _errors = encoder.embed_images(locations, landing)
            text = encoder.embed_texts(texts)
            results[device] = (images, text, time.perf_counter() - started, encoder)
        (ci, ct, cs, _), (gi, gt, gs, genc) = results["cpu"], results["cuda"]
        image_ok, gpu_images = ci, gi
        cos_img = (image_ok * gpu_images).sum(1)
        cos_txt = (ct * gt).sum(1)
        score_gap = np.abs(clip_scores(image_ok, ct) - clip_scores(gpu_images, gt))
        print(
            f"CLIP cpu fp32 vs {genc!r}: image cosine min {cos_img.min():.5f}, "
            f"text cosine min {cos_txt.min():.5f}, clip_score max gap {score_gap.max():.5f}; "
            f"cpu {cs:.2f}s, cuda {gs:.2f}s for {len(locations)} images + texts"
        )
        if cos_img.min() < 0.99 or cos_txt.min() < 0.99 or score_gap.max() > 0.01:
            failures.append("CLIP on CUDA disagrees with the CPU")

        from bench.tokens import photos
        from dataplatform.core.tokens.crop_policy import apply, plan
        from dataplatform.core.tokens.vq_tokenizer import (
            VQConfig,
            load_tokenizer,
            save_tokenizer,
            train_vqvae,
        )

        base = photos()
        crops = np.stack([np.asarray(apply(im, plan(*im.size, 64, "center"), 64)) for im in base])
        config = VQConfig(resolution=64, downsample=8, codebook_size=512, channels=32)
        tok = train_vqvae(crops, config, steps=20, device="cpu")
        saved = save_tokenizer(tok, Path(tmp) / "vq")
        batch = np.stack([np.asarray(apply(im, plan(*im.size, 256, "center"), 256)) for im in base])
        on_cpu = load_tokenizer(saved, device="cpu").encode(batch)
        on_gpu = load_tokenizer(saved, device="cuda").encode(batch)
        agree = float((on_cpu == on_gpu).mean())
        print(f"VQ tokens cpu vs cuda: {agree:.4%} of {on_cpu.size} positions equal")
        if agree < 0.99:
            failures.append("VQ tokens on CUDA disagree with the CPU")

        from dataplatform.core.scoring.watermark_model import build_watermark_model, load_watermark

        weights = Path(tmp) / "watermark-random.pt"
        torch.manual_seed(0)
        torch.save(build_watermark_model().state_dict(), weights)
        images = [base[k % len(base)] for k in range(args.images)]
        scores = {}
        for device in ("cpu", "cuda"):
            scorer = load_watermark(weights, device)
            scorer.score(images[:4])  # warm-up
            started = time.perf_counter()
            scores[device] = scorer.score(images)
            rate = len(images) / (time.perf_counter() - started)
            print(f"watermark detector on {device}: {rate:.1f} images/s")
        gap = float(np.abs(scores["cpu"] - scores["cuda"]).max())
        print(f"watermark scores cpu vs cuda: max gap {gap:.5f} over {len(images)} images")
        if gap > 0.01:
            failures.append("watermark scores on CUDA disagree with the CPU")
    print("FAILED: " + "; ".join(failures) if failures else "GPU paths agree with the CPU")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
