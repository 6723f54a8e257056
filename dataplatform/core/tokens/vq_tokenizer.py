"""A VQ-VAE image tokenizer: images to grids of codebook indices and back.

An encoder (strided convolutions with residual blocks) maps an ``H x W`` image to an
``H/ds x W/ds`` grid of vectors; each vector is replaced by the index of its nearest codebook
entry, which is the visual token an autoregressive model reads. The decoder maps the entries
back to pixels. 256 x 256 images with ``downsample=16`` give 16 x 16 = 256 tokens.

The codebook is learned with exponential moving averages of the encodings assigned to each
entry (as in VQ-VAE-2) rather than by gradient, and an entry that no encoding has chosen for a
while is restarted on an encoding from the current batch, so that most of the codebook stays in
use. The encoder is trained with reconstruction MSE plus the commitment term through a
straight-through estimator.

``load_tokenizer`` also reads a diffusers ``VQModel`` directory (aMUSEd's, for example), so the
rest of the platform tokenizes through one ``VQTokenizer`` whatever made the weights.

torch and diffusers are imported inside functions: Dagster imports this module in every step
process, and those must start in seconds.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

KIND_NATIVE = "dataplatform-vqvae"
KIND_DIFFUSERS = "diffusers-vqmodel"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Images per forward pass in encode/decode: bounds memory at 256 px on a small GPU or a CPU.
INFERENCE_BATCH = 32
# An entry whose moving-average count falls below this many encodings per batch is restarted.
DEAD_CODE_THRESHOLD = 1.0


@dataclass(frozen=True)
class VQConfig:
    """Defaults are the book's setting: 256 px images to 16 x 16 tokens from 1024 codes."""

    resolution: int = 256
    downsample: int = 16
    """Pixels per token side; a power of two (one stride-2 stage per factor of two)."""
    codebook_size: int = 1024
    code_dim: int = 64
    channels: int = 64
    commitment: float = 0.25
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        ds = self.downsample
        if ds < 2 or ds & (ds - 1):
            raise ValueError(f"VQConfig.downsample must be a power of two >= 2, got {ds}")
        if self.resolution % ds:
            raise ValueError(
                f"VQConfig.resolution {self.resolution} is not a multiple of downsample {ds}"
            )
        if self.codebook_size < 2 or self.code_dim < 1 or self.channels < 1:
            raise ValueError(
                "VQConfig.codebook_size must be >= 2 and code_dim, channels >= 1, got "
                f"{self.codebook_size}, {self.code_dim}, {self.channels}"
            )
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"VQConfig.ema_decay must be in (0, 1), got {self.ema_decay}")

    @property
    def stages(self) -> int:
        return int(math.log2(self.downsample))


@dataclass
class VQTokenizer:
    """A VQ model in eval mode: ``encode`` images to token ids, ``decode`` ids to images."""

    module: Any
    """A torch module with ``encode_indices(x) -> (n, h, w)`` and ``decode_indices(ids)``."""
    config: VQConfig
    identity: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"

    @property
    def token_dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.config.codebook_size <= 65536 else np.int32)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB, H and W multiples of ``downsample`` -> (n, H/ds, W/ds) ids."""
        import torch

        images = np.asarray(images)
        ds = self.config.downsample
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be (n, H, W, 3) uint8 RGB, got {images.shape} {images.dtype}"
            )
        n, h, w, _ = images.shape
        if h % ds or w % ds:
            raise ValueError(f"image size {h}x{w} is not a multiple of downsample {ds}: crop it")
        out = np.zeros((n, h // ds, w // ds), dtype=self.token_dtype)
        with torch.inference_mode(), self._autocast():
            for start in range(0, n, INFERENCE_BATCH):
                x = _to_tensor(images[start : start + INFERENCE_BATCH], self.device)
                ids = self.module.encode_indices(x)
                out[start : start + len(x)] = ids.cpu().numpy().astype(self.token_dtype)
        return out

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """(n, h, w) token ids -> (n, h*ds, w*ds, 3) uint8 RGB."""
        import torch

        tokens = np.asarray(tokens)
        if tokens.ndim != 3:
            raise ValueError(f"tokens must be (n, h, w), got shape {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.codebook_size):
            raise ValueError(
                f"token ids must be in [0, {self.config.codebook_size}), got "
                f"[{tokens.min()}, {tokens.max()}]"
            )
        n, h, w = tokens.shape
        ds = self.config.downsample
        out = np.zeros((n, h * ds, w * ds, 3), dtype=np.uint8)
        with torch.inference_mode(), self._autocast():
            for start in range(0, n, INFERENCE_BATCH):
                ids = torch.from_numpy(tokens[start : start + INFERENCE_BATCH].astype(np.int64))
                x = self.module.decode_indices(ids.to(self.device))
                out[start : start + len(ids)] = _to_uint8(x)
        return out

    def _autocast(self):
        import contextlib

        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


def train_vqvae(
    images: np.ndarray,
    config: VQConfig,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[int, float], None] | None = None,
) -> VQTokenizer:
    """Train a VQ-VAE on (n, R, R, 3) uint8 images at ``config.resolution``; same seed, same model.

    ``steps=0`` gives the untrained (randomly initialised) model, a baseline for ``evaluate``.
    """
    import torch
    import torch.nn.functional as F

    images = np.asarray(images)
    r = config.resolution
    if images.ndim != 4 or images.shape[1:] != (r, r, 3) or images.dtype != np.uint8:
        raise ValueError(
            f"training images must be (n, {r}, {r}, 3) uint8 (config.resolution), got "
            f"{images.shape} {images.dtype}: resize or crop them first"
        )
    if len(images) == 0:
        raise ValueError("no training images")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = _modules().VQVAE(config).to(device)
    data = _to_tensor(images, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    # Cosine decay to a tenth: the last steps refine rather than jump between codes.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / max(steps, 1)))
    )
    model.train()
    for step in range(steps):
        idx = rng.choice(len(data), size=batch_size, replace=len(data) < batch_size)
        x = data[torch.from_numpy(idx).to(device)]
        recon, commit = model(x)
        loss = F.mse_loss(recon, x) + config.commitment * commit
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if log is not None:
            log(step, float(loss.detach()))
    if steps == 0:
        # An untrained codebook is initialised from the data, as the first training step would.
        with torch.no_grad():
            model.quantizer.initialise(model.encoder(data[:batch_size]))
    model.eval()
    blob = _state_bytes(model)
    identity = {
        "kind": KIND_NATIVE,
        "path": "",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "codebook_size": str(config.codebook_size),
        "downsample": str(config.downsample),
    }
    return VQTokenizer(module=model, config=config, identity=identity, device=device)


def evaluate(tok: VQTokenizer, images: np.ndarray) -> dict[str, float]:
    """Reconstruction PSNR (dB, mean over images) and how much of the codebook these images use."""
    tokens = tok.encode(images)
    recon = tok.decode(tokens)
    err = (recon.astype(np.float64) - np.asarray(images, dtype=np.float64)) ** 2
    mse = np.maximum(err.reshape(len(images), -1).mean(axis=1), 1e-10)
    psnr = float(np.mean(10.0 * np.log10(255.0**2 / mse)))
    counts = np.bincount(tokens.ravel().astype(np.int64), minlength=tok.config.codebook_size)
    usage = float((counts > 0).mean())
    p = counts[counts > 0] / counts.sum()
    return {
        "psnr": psnr,
        "codebook_usage": usage,
        "dead_code_share": 1.0 - usage,
        "perplexity": float(np.exp(-(p * np.log(p)).sum())),
    }


def save_tokenizer(tok: VQTokenizer, directory: Path) -> Path:
    """Write config.json and weights.pt to ``directory``, replacing it whole or not at all."""
    if tok.identity.get("kind") != KIND_NATIVE:
        raise ValueError(
            f"only a {KIND_NATIVE} tokenizer can be saved, this one is {tok.identity.get('kind')}: "
            "point tokenizer_path at its directory instead"
        )
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    blob = _state_bytes(tok.module)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (staging / WEIGHTS_FILE).write_bytes(blob)
        meta = {"format": KIND_NATIVE, "config": asdict(tok.config)}
        (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old / directory.name)
            os.replace(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


_TOKENIZERS: dict[tuple[str, str], tuple[tuple, VQTokenizer]] = {}
_TOKENIZERS_LOCK = threading.Lock()


def load_tokenizer(path: Path | str, device: str = "cpu") -> VQTokenizer:
    """A tokenizer saved by ``save_tokenizer``, or a diffusers ``VQModel`` directory.

    Loaded once per process, path and device, so that a run encoding day after day loads it
    once; loaded again when the directory's files are replaced (``save_tokenizer`` writes new
    files, as a retrained ``vq_tokenizer`` does).
    """
    path = Path(path).expanduser()
    key, stamp = (str(path), device), _files_stamp(path)
    with _TOKENIZERS_LOCK:
        cached = _TOKENIZERS.get(key)
        if cached is None or cached[0] != stamp:
            cached = _TOKENIZERS[key] = (stamp, _load_tokenizer(path, device))
        return cached[1]


def _files_stamp(path: Path) -> tuple:
    """Name, inode, mtime and size of each file in ``path``: a rewritten file changes it."""
    if not path.is_dir():
        return ()
    stats = [(f.name, f.stat()) for f in path.iterdir() if f.is_file()]
    return tuple(sorted((n, s.st_ino, s.st_mtime_ns, s.st_size) for n, s in stats))


def _load_tokenizer(path: Path, device: str) -> VQTokenizer:
    import torch

    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"no tokenizer at {path} (no {CONFIG_FILE}): set `tokenizer_path` to a directory "
            "written by save_tokenizer or a diffusers VQModel directory"
        )
    meta = json.loads(config_path.read_text())
    if meta.get("_class_name") == "VQModel":
        return _load_diffusers(path, meta, device)
    if meta.get("format") != KIND_NATIVE:
        raise ValueError(
            f"{config_path} is neither a {KIND_NATIVE} config nor a diffusers VQModel config: "
            "check `tokenizer_path`"
        )
    config = VQConfig(**meta["config"])
    blob = (path / WEIGHTS_FILE).read_bytes()
    model = _modules().VQVAE(config)
    model.load_state_dict(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))
    model.to(device).eval()
    identity = {
        "kind": KIND_NATIVE,
        "path": str(path),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "codebook_size": str(config.codebook_size),
        "downsample": str(config.downsample),
    }
    return VQTokenizer(module=model, config=config, identity=identity, device=device)


def _load_diffusers(path: Path, meta: dict[str, Any], device: str) -> VQTokenizer:
    try:
        from diffusers import VQModel
    except ImportError as exc:
        raise ImportError(
            f"{path} is a diffusers VQModel: install diffusers to load it (`pip install diffusers`)"
        ) from exc
    model = VQModel.from_pretrained(path)
    blocks = list(model.config.block_out_channels)
    config = VQConfig(
        resolution=int(model.config.sample_size),
        downsample=2 ** (len(blocks) - 1),
        codebook_size=int(model.config.num_vq_embeddings),
        code_dim=int(model.config.vq_embed_dim or model.config.latent_channels),
        channels=int(blocks[0]),
    )
    weights = next((path / f for f in DIFFUSERS_WEIGHTS if (path / f).is_file()), None)
    identity = {
        "kind": KIND_DIFFUSERS,
        "path": str(path),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest() if weights else "",
        "codebook_size": str(config.codebook_size),
        "downsample": str(config.downsample),
    }
    adapter = _modules().DiffusersAdapter(model).to(device).eval()
    return VQTokenizer(module=adapter, config=config, identity=identity, device=device)


def _to_tensor(images: np.ndarray, device: str) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float (n, 3, H, W) in [-1, 1], the range both model kinds expect."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    import torch

    x = x.float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


def _state_bytes(module: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return buf.getvalue()


@functools.cache
def _modules() -> Any:
    """The torch module classes, built on first use so that importing this module stays cheap."""
    import types

    import torch
    import torch.nn.functional as F
    from torch import nn

    def norm(c: int) -> nn.GroupNorm:
        return nn.GroupNorm(math.gcd(8, c), c)

    class ResBlock(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.block = nn.Sequential(
                norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
            )  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.block(x)

    class Encoder(nn.Sequential):
        def __init__(self, cfg: VQConfig) -> None:
            c = cfg.channels
            layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1)]
            # Residual blocks only below full resolution: there they cost a quarter as much.
            for _ in range(cfg.stages):
                layers += [nn.Conv2d(c, c, 4, stride=2, padding=1), ResBlock(c)]
            layers += [norm(c), nn.SiLU(), nn.Conv2d(c, cfg.code_dim, 1)]
            super().__init__(*layers)

    class Decoder(nn.Sequential):
        def __init__(self, cfg: VQConfig) -> None:
            c = cfg.channels
            layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, c, 3, padding=1), ResBlock(c)]
            for stage in range(cfg.stages):
                layers += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c, c, 3, padding=1),
                ]
                if stage < cfg.stages - 1:
                    layers.append(ResBlock(c))
            layers += [norm(c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]
            super().__init__(*layers)

    class EMAQuantizer(nn.Module):
        """Nearest-entry quantizer; the codebook follows moving averages, not gradients."""

        def __init__(self, cfg: VQConfig) -> None:
            super().__init__()
            self.decay = cfg.ema_decay
            k, d = cfg.codebook_size, cfg.code_dim
            self.register_buffer("codebook", torch.randn(k, d))
            self.register_buffer("cluster_size", torch.zeros(k))
            self.register_buffer("embed_sum", torch.zeros(k, d))
            self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

        def indices(self, z: torch.Tensor) -> torch.Tensor:
            """(n, d, h, w) encodings -> (n, h, w) nearest-entry ids (distances in fp32)."""
            n, d, h, w = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
            book = self.codebook.float()
            dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
            return dist.argmin(1).view(n, h, w)

        def lookup(self, ids: torch.Tensor) -> torch.Tensor:
            return F.embedding(ids, self.codebook).permute(0, 3, 1, 2).contiguous()

        def initialise(self, z: torch.Tensor) -> None:
            """Entries start on encodings of the first batch, so none starts out of reach."""
            flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
            k = self.codebook.shape[0]
            picks = torch.randint(len(flat), (k,), device=flat.device)
            self.codebook.copy_(flat[picks] + 1e-3 * torch.randn_like(flat[picks]))
            expected = len(flat) / k
            self.cluster_size.fill_(expected)
            self.embed_sum.copy_(self.codebook * expected)
            self.initialised.fill_(True)

        @torch.no_grad()
        def update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
            flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
            k = self.codebook.shape[0]
            onehot = F.one_hot(ids.reshape(-1), k).type(flat.dtype)
            self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
            self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
            total = self.cluster_size.sum()
            eps = 1e-5
            smoothed = (self.cluster_size + eps) / (total + k * eps) * total
            self.codebook.copy_(self.embed_sum / smoothed[:, None])
            dead = self.cluster_size < DEAD_CODE_THRESHOLD
            n_dead = int(dead.sum())
            if n_dead:
                picks = torch.randint(len(flat), (n_dead,), device=flat.device)
                fresh = flat[picks] + 1e-3 * torch.randn_like(flat[picks])
                self.codebook[dead] = fresh
                # Restarted with a few encodings' weight, so it has some steps to be chosen.
                restart = 2.0 * DEAD_CODE_THRESHOLD
                self.cluster_size[dead] = restart
                self.embed_sum[dead] = fresh * restart

        def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if self.training and not bool(self.initialised):
                self.initialise(z)
            ids = self.indices(z)
            zq = self.lookup(ids).to(z.dtype)
            commit = F.mse_loss(z, zq.detach())
            if self.training:
                self.update(z, ids)
            # Straight-through: the decoder's gradient passes to the encoder unchanged.
            return z + (zq - z).detach(), commit

    class VQVAE(nn.Module):
        def __init__(self, cfg: VQConfig) -> None:
            super().__init__()
            self.encoder = Encoder(cfg)
            self.quantizer = EMAQuantizer(cfg)
            self.decoder = Decoder(cfg)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            zq, commit = self.quantizer(self.encoder(x))
            return self.decoder(zq), commit

        def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
            return self.quantizer.indices(self.encoder(x))

        def decode_indices(self, ids: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.quantizer.lookup(ids))

    class DiffusersAdapter(nn.Module):
        """diffusers' VQModel behind the same two calls: its quantizer picks and looks up ids."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
            h = self.model.encode(x.to(self.model.dtype)).latents
            _, _, (_, _, ids) = self.model.quantize(h.float() if h.dtype != torch.float32 else h)
            return ids.reshape(h.shape[0], h.shape[2], h.shape[3])

        def decode_indices(self, ids: torch.Tensor) -> torch.Tensor:
            n, h, w = ids.shape
            quantize = self.model.quantize
            shape = (n, h, w, quantize.vq_embed_dim)
            zq = quantize.get_codebook_entry(ids.reshape(-1), shape)
            return self.model.decode(zq, force_not_quantize=True).sample

    return types.SimpleNamespace(VQVAE=VQVAE, DiffusersAdapter=DiffusersAdapter)


def auto_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when torch sees a GPU, else ``cpu``; others pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
