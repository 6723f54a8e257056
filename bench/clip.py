"""Benchmark: CLIP image embedding throughput, our encoder against the one-image-at-a-time loop.

(a) `ClipEncoder.embed_images`: batches, with DataLoader worker processes reading, decoding
    (JPEG draft decoding) and preprocessing while the model runs.
(b) the loop from ../shared/seeds/000_6acbf06b49b13af6.txt: per image, `Image.open`,
    preprocess, unsqueeze, `encode_image`, normalise, under inference_mode so that it does not
    also pay for autograd.

Both use the same model object, with random weights: `create_model_and_transforms(model,
pretrained=None)` saved to a temporary checkpoint and loaded through `load_encoder`, so nothing
is downloaded. Images are generated photo-like JPEGs (0.3-1 MP), cached under bench/out/.

Usage: .venv/bin/python bench/clip.py [--images 256] [--model ViT-B-32] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataplatform.core.samples.synthetic_images import write_synthetic_landing  # noqa: E402
from dataplatform.core.scoring.clip_model import ClipEncoder, ClipSpec, load_encoder  # noqa: E402

OUT = ROOT / "bench" / "out"
DATE = "2025-01-01"
MEGAPIXELS = (0.3, 1.0)


def synthetic_images(n_images: int, seed: int = 0) -> tuple[Path, list[str]]:
    """The landing root and the locations of n_images distinct JPEGs, generated once."""
    landing = OUT / f"clip_landing_{n_images}_{seed}" / "landing"
    day = landing / DATE
    if not (day / "pairs.jsonl").is_file():
        started = time.perf_counter()
        write_synthetic_landing(
            day,
            n_distinct=n_images,
            byte_copies=0,
            perceptual_copies=0,
            megapixels=MEGAPIXELS,
            seed=seed,
            workers=os.cpu_count() or 1,
        )
        print(f"generated {n_images} JPEGs in {time.perf_counter() - started:.0f}s under {day}")
    paths = sorted((day / "images").glob("*.jpg"))
    return landing, [p.relative_to(landing).as_posix() for p in paths]


def random_weights_encoder(
    model: str, device: str, batch_size: int, workers: int, folder: Path
) -> ClipEncoder:
    import open_clip
    import torch

    network, _, _ = open_clip.create_model_and_transforms(model, pretrained=None)
    checkpoint = folder / f"{model}-random.pt"
    torch.save(network.state_dict(), checkpoint)
    del network
    spec = ClipSpec(
        model=model,
        pretrained=str(checkpoint),
        device=device,
        batch_size=batch_size,
        num_workers=workers,
    )
    return load_encoder(spec)


def one_at_a_time(encoder: ClipEncoder, paths: list[Path]) -> np.ndarray:
    """The seed's loop, on our model object."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    rows = []
    with torch.inference_mode():
        for path in paths:
            image = Image.open(path)
            pixels = encoder.preprocess(image).unsqueeze(0)
            pixels = pixels.to(encoder.device, dtype=getattr(torch, encoder.dtype_name))
            features = encoder.model.encode_image(pixels)
            rows.append(F.normalize(features.float(), dim=-1).cpu().numpy()[0])
    return np.stack(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import torch

    landing, locations = synthetic_images(args.images)
    paths = [landing / location for location in locations]
    with tempfile.TemporaryDirectory(prefix="clip-bench-") as folder:
        encoder = random_weights_encoder(
            args.model, args.device, args.batch_size, args.workers, Path(folder)
        )
    print(
        f"model {args.model} (random weights), device {encoder.device}, precision "
        f"{encoder.precision}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
        f"{len(locations)} JPEGs of {MEGAPIXELS[0]}-{MEGAPIXELS[1]} MP, "
        f"batch {args.batch_size}, workers {args.workers}"
    )

    # Warm both paths up (kernels, allocator, page cache) on a few images before timing.
    encoder.embed_images(locations[: min(8, len(locations))], landing)
    one_at_a_time(encoder, paths[:2])

    batched, errors = encoder.embed_images(locations, landing)
    stats = encoder.last_stats
    assert stats is not None and not any(errors), errors
    started = time.perf_counter()
    looped = one_at_a_time(encoder, paths)
    loop_seconds = time.perf_counter() - started
    loop_rate = len(paths) / loop_seconds

    agreement = np.einsum("ij,ij->i", batched, looped)
    wait_label = (
        "GPU waiting for decoding"
        if encoder.device.startswith("cuda")
        else "model waiting for decoding"
    )
    print(
        f"(a) ClipEncoder.embed_images: {stats.images_per_second:7.1f} images/s "
        f"({stats.seconds:.1f}s; {wait_label}: {stats.loader_wait_share:.0%} of the time)"
    )
    print(f"(b) one image at a time:      {loop_rate:7.1f} images/s ({loop_seconds:.1f}s)")
    print(f"speed-up (a)/(b): {stats.images_per_second / loop_rate:.2f}x")
    print(
        "cosine of (a) and (b) rows (JPEG draft decoding in (a)): "
        f"min {agreement.min():.4f}, mean {agreement.mean():.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
