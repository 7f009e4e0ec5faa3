"""Unlabeled images for distillation: image folders, the built-in sample photos, random resized crops.

Distillation needs no labels, only images the teacher can describe. Sources (`data.source`):

- a folder: `FolderImages(root)`, every image file under `root`, recursively (jpg, png, webp, bmp, gif, tif);
- `keyshapes` or `keyshapes:N`: `KeyShapesImages`, N (default 65536) scenes of the built-in synthetic task rendered
  on demand, a pure function of the index: unlimited distillation data with no file and no extra package;
- `skimage`: `SampleImages()`, scikit-image's bundled sample photos (needs scikit-image).

Sampling is a pure function of `(seed, phase, sample number)`: the image a training sample shows and its
crop are computed, not drawn from a generator that runs along. The data position of a run is therefore
just its step, and a resumed run sees exactly the batches an uninterrupted one would. Process `r` of `world`
takes its contiguous share of each global batch, so the global batch is the same for any number of processes.

Training batches are uint8 pixels (`render_pixels`), a quarter of float32's bytes through the loader's worker queues
and the copy to the GPU; the trainer normalises them on the device (`normalize`), to exactly the float32 values
`render` gives (the held-out images the scorers read, which are rendered once, stay float32).

Unreadable, truncated or corrupt files, and images over `jetvit.io.MAX_IMAGE_PIXELS` (decompression bombs), are
skipped (the next readable image takes their place, deterministically) and counted; an empty folder is an error that
names it.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# scikit-image sample images that are RGB photographs (others are grayscale, RGBA or microscopy stacks).
SAMPLE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "stereo_motorcycle:0",
    "stereo_motorcycle:1",
)


class FolderImages:
    """Every image file under `root` (recursive, sorted), decoded on demand as RGB."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"image source {str(root)!r} is not a folder")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.paths:
            raise ValueError(f"image folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return str(self.paths[i].relative_to(self.root))

    def load(self, i: int) -> Image.Image:
        from jetvit.io import open_image
        from jetvit.tasks.datasets import to_rgb

        with open_image(self.paths[i]) as im:  # an image over jetvit.io.MAX_IMAGE_PIXELS is refused unread
            return to_rgb(im)  # decodes fully (a truncated file raises here, not later); 16-bit scaled, not clipped


class SampleImages:
    """scikit-image's bundled sample photos (no download), kept in memory."""

    def __init__(self, names: tuple[str, ...] = SAMPLE_PHOTOS) -> None:
        import importlib.util

        if importlib.util.find_spec("skimage") is None:  # say so now, not as every photo being "unreadable"
            raise ModuleNotFoundError(
                "data.source skimage needs scikit-image, which is not installed (pip install jetvit[skimage]); "
                "data.source keyshapes needs nothing",
                name="skimage",
            )
        self.names = list(names)
        self._cache: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self.names)

    def name(self, i: int) -> str:
        return f"skimage:{self.names[i]}"

    def load(self, i: int) -> Image.Image:
        if i not in self._cache:
            import skimage.data
            from PIL import Image

            fn, _, part = self.names[i].partition(":")
            arr = getattr(skimage.data, fn)()
            if part:
                arr = arr[int(part)]
            self._cache[i] = Image.fromarray(arr).convert("RGB")
        return self._cache[i]


class KeyShapesImages:
    """`length` scenes of the `keyshapes` train split (`jetvit.tasks.synthetic`), rendered at `size` on demand."""

    def __init__(self, length: int = 65536, *, size: int | None = None, seed: int = 0) -> None:
        from jetvit.tasks import synthetic

        if length < 2:
            raise ValueError(f"data.source keyshapes:N needs N >= 2 images, got {length}")
        self.length, self.size, self.seed = length, size or synthetic.NATIVE_SIZE, seed

    def __len__(self) -> int:
        return self.length

    def name(self, i: int) -> str:
        return f"keyshapes:train/{i}"

    def load(self, i: int) -> Image.Image:
        import numpy as np
        from PIL import Image

        from jetvit.tasks import synthetic

        image, _, _ = synthetic.render(synthetic.sample_scene(self.seed, "train", i), self.size)  # (3, H, W) in [0, 1]
        return Image.fromarray(np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8))


Source = FolderImages | SampleImages | KeyShapesImages


def open_source(source: str) -> Source:
    """The image source named by `data.source`: "skimage", "keyshapes[:N]", or an image folder."""
    if source == "skimage":
        return SampleImages()
    if source == "keyshapes" or source.startswith("keyshapes:"):
        n = source.partition(":")[2]
        if n and not n.isdigit():
            raise ValueError(f"data.source {source!r}: write keyshapes or keyshapes:N with N a number of images")
        return KeyShapesImages(int(n)) if n else KeyShapesImages()
    return FolderImages(source)


class ImageSet:
    """A subset of a source's images (by index) that skips unreadable files.

    `get(k)` returns the k-th image of the subset, or when it cannot be read, the next readable one
    (wrapping around); which files failed is remembered, so each is tried and counted once per process.
    """

    def __init__(self, source: Source, indices: list[int], *, role: str = "") -> None:
        self.source = source
        self.indices = list(indices)
        self.role = role  # which part of the source this is, for errors: "training", "held-out"
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, k: int) -> tuple[Image.Image, list[str]]:
        """(image, names of the files skipped to reach it)."""
        skipped = []
        for j in range(len(self.indices)):
            i = self.indices[(k + j) % len(self.indices)]
            if i in self.bad:
                continue
            try:
                return self.source.load(i), skipped
            except ImportError:  # a missing package is not a bad file
                raise
            except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... on corrupt files
                self.bad.add(i)
                skipped.append(self.source.name(i))
                log.warning("skipping unreadable image %s: %s", self.source.name(i), e)
        which = f"{len(self.indices)} {self.role}" if self.role else f"{len(self.indices)}"
        raise ValueError(
            f"no readable image among the {which} images of {describe(self.source)} ({len(self.source)} in all: "
            f"data.holdout of them are held out to score the search, the rest train); add readable images"
        )


def describe(source: Source) -> str:
    if isinstance(source, FolderImages):
        return f"folder {str(source.root)!r}"
    if isinstance(source, KeyShapesImages):
        return f"{source.length} generated keyshapes scenes"
    return "the skimage sample photos"


def split_holdout(n: int, holdout: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): a fixed pseudo-random choice of `holdout` of `n` images.

    The choice depends on `n` only (not on the run's seed), so scores of runs with different seeds compare.
    """
    import numpy as np

    if holdout >= n:
        raise ValueError(f"data.holdout={holdout} leaves no training image: the source has {n} images")
    perm = np.random.default_rng(0).permutation(n)
    return sorted(int(i) for i in perm[holdout:]), sorted(int(i) for i in perm[:holdout])


# --- crops and normalisation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Crop:
    box: tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels
    flip: bool


def random_resized_crop(
    rng, width: int, height: int, *, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool
) -> Crop:
    """A crop covering a random area fraction in `scale` with aspect ratio (w/h) in `ratio` (log-uniform)."""
    import math

    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if w <= width and h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            break
    else:  # the whole image, clipped to the allowed aspect ratio
        aspect = min(max(width / height, ratio[0]), ratio[1])
        w, h = (width, width / aspect) if width / height <= aspect else (height * aspect, height)
        left, top = (width - w) / 2, (height - h) / 2
    flip = bool(hflip and rng.uniform() < 0.5)
    return Crop((left, top, left + w, top + h), flip)


def center_crop(width: int, height: int, out_h: int, out_w: int) -> Crop:
    """The largest centred box of the output's aspect ratio."""
    aspect = out_w / out_h
    w, h = (width, width / aspect) if width / height <= aspect else (height * aspect, height)
    left, top = (width - w) / 2, (height - h) / 2
    return Crop((left, top, left + w, top + h), False)


def render_pixels(img: Image.Image, crop: Crop, size: tuple[int, int]) -> torch.Tensor:
    """Crop and resize to `size` (H, W) -> (3, H, W) uint8: what the training loader's workers send (a quarter of
    the bytes of float32, through the worker queues and the host-to-device copy); `normalize` finishes it on the
    device."""
    import numpy as np
    import torch
    from PIL import Image

    out = img.resize((size[1], size[0]), Image.Resampling.BICUBIC, box=crop.box)
    if crop.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def normalize(
    pixels: torch.Tensor, mean: torch.Tensor | tuple[float, ...], std: torch.Tensor | tuple[float, ...]
) -> torch.Tensor:
    """uint8 images (..., 3, H, W) -> float32 (x / 255 - mean) / std, on the images' device. `mean`, `std`: per
    channel (tuples, or float32 tensors already on that device, which saves two small copies per call)."""
    import torch

    mean = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def render(img: Image.Image, crop: Crop, size: tuple[int, int], mean, std) -> torch.Tensor:
    """Crop, resize to `size` (H, W) and normalise -> (3, H, W) float32."""
    return normalize(render_pixels(img, crop, size), mean, std)


# --- deterministic sampling ---------------------------------------------------------------------------


def phase_key(phase: str) -> int:
    return zlib.crc32(phase.encode())


class SamplePlan:
    """Which image and which crop the n-th training sample of a phase shows; a pure function of n.

    Images are visited in epochs: epoch e is a permutation of the training images seeded by
    (seed, phase, e), so every image is seen once per epoch.
    """

    def __init__(self, n_images: int, *, seed: int, phase: str) -> None:
        self.n = n_images
        self.seed = seed
        self.phase = phase_key(phase)
        self._perm: tuple[int, list[int]] | None = None

    def image(self, sample: int) -> int:
        import numpy as np

        epoch, pos = divmod(sample, self.n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, self.phase, epoch]).permutation(self.n).tolist())
        return self._perm[1][pos]

    def rng(self, sample: int):
        """The generator that draws sample `sample`'s crop (and anything else random about it)."""
        import numpy as np

        return np.random.default_rng([self.seed, self.phase, 1 << 40, sample])


def shard(batch_size: int, rank: int, world: int) -> range:
    """The positions of one global batch that process `rank` of `world` computes."""
    if batch_size % world:
        raise ValueError(f"global batch_size={batch_size} is not divisible by the {world} processes")
    per = batch_size // world
    return range(rank * per, (rank + 1) * per)


class DistillBatches:
    """Map-style dataset whose item i is the i-th micro-batch this process computes in a stage.

    Items run over optimizer steps `start_step ... steps-1`, `accum` micro-batches per step. Each item is
    `{"images": (m, 3, H, W) uint8, "skipped": [file names], "step": int, "micro": int}`; use it with
    `DataLoader(batch_size=None)`, and `normalize` the images where the model runs.
    """

    def __init__(
        self,
        images: ImageSet,
        plan: SamplePlan,
        *,
        stage_offset: int,
        start_step: int,
        steps: int,
        batch_size: int,
        micro_batch_size: int,
        rank: int,
        world: int,
        size: tuple[int, int],
        scale: tuple[float, float],
        ratio: tuple[float, float],
        hflip: bool,
    ) -> None:
        self.images, self.plan = images, plan
        self.stage_offset, self.start_step, self.steps = stage_offset, start_step, steps
        self.batch_size, self.micro = batch_size, micro_batch_size
        self.positions = shard(batch_size, rank, world)
        if len(self.positions) % micro_batch_size:
            raise ValueError(
                f"the per-process batch {len(self.positions)} (batch_size={batch_size} over {world} processes) "
                f"is not divisible by micro_batch_size={micro_batch_size}"
            )
        self.accum = len(self.positions) // micro_batch_size
        self.size = size
        self.scale, self.ratio, self.hflip = scale, ratio, hflip

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accum

    def __getitem__(self, i: int) -> dict:
        import torch

        step, micro = divmod(i, self.accum)
        step += self.start_step
        first = self.positions.start + micro * self.micro
        xs, skipped = [], []
        for pos in range(first, first + self.micro):
            sample = self.stage_offset + step * self.batch_size + pos
            img, bad = self.images.get(self.plan.image(sample))
            skipped += bad
            crop = random_resized_crop(
                self.plan.rng(sample), img.width, img.height, scale=self.scale, ratio=self.ratio, hflip=self.hflip
            )
            xs.append(render_pixels(img, crop, self.size))
        return {"images": torch.stack(xs), "skipped": skipped, "step": step, "micro": micro}


def holdout_images(
    images: ImageSet, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, list[str]]:
    """The held-out images, centre-cropped at `size` -> ((n, 3, H, W), skipped file names)."""
    import torch

    xs, skipped = [], []
    for k in range(len(images)):
        img, bad = images.get(k)
        skipped += bad
        xs.append(render(img, center_crop(img.width, img.height, *size), size, mean, std))
    return torch.stack(xs), skipped
