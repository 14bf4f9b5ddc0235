"""Images of vision-language chats: where a part's image comes from, and how the model's processor sizes it.

Image parts, as people have them:

    OpenAI      {"type": "image_url", "image_url": {"url": "data:image/png;base64,..." | PATH | URL}}
    datasets    {"type": "image", "image": {"bytes": b"...", "path": ...} | PATH | b"..."},
                {"type": "image", "path": PATH}, {"type": "image", "url": ...}

PATH is a local file (relative paths from the input file's folder); a URL with a scheme is read through
fsspec (s3://, gs://, hf://, https://: the user's URL says where, nothing is fetched otherwise). Video parts
are refused (images only, for now).

The processor folder (`--processor DIR`, the model's Hugging Face processor files) decides sizes: its
preprocessor_config.json must be a Qwen2-VL-family image processor (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) or
LLaVA-1.5's CLIP processor (with processor_config.json's patch_size, vision_feature_select_strategy and
num_additional_image_tokens), read with transformers' PIL backends (Qwen2VLImageProcessorPil,
CLIPImageProcessorPil; torchvision is not needed). `prepare` resizes an
image exactly as that processor does and keeps the resized pixels as uint8 [3, H, W]: what Packer stores.
The loader turns them into the model's pixel_values (rescale, normalize, patchify:
packer.train.vision.pixel_values), equal to the processor's own output; each image takes
prod(grid_thw) / merge_size^2 placeholder tokens.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from pathlib import Path

import numpy as np

from packer.core.errors import ConfigError, InputError
from packer.core.storage import is_url, open_input
from packer.core.vision import ImageMeta

FAMILY = ("Qwen2VLImageProcessor", "Qwen2VLImageProcessorFast", "Qwen2VLImageProcessorPil")
"""image_processor_type values Packer reads as Qwen-VL (Qwen2-VL, Qwen2.5-VL and Qwen3-VL all use them)."""
LLAVA = ("CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPImageProcessorPil")
"""image_processor_type values Packer reads as LLaVA (1.5): fixed-size images, plain causal image tokens."""
IMAGE_PARTS = ("image", "image_url", "input_image")
VIDEO_PARTS = ("video", "video_url", "input_video")
_DATA_URI = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.I)


class VisionProcessor:
    """A model's image processor, read from its processor folder (see the module docstring)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        cfg_path = folder / "preprocessor_config.json"
        if not cfg_path.is_file():
            raise ConfigError(f"{folder}: no preprocessor_config.json; --processor takes the model's Hugging Face "
                              "processor folder (preprocessor_config.json, the tokenizer files and the chat template)")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ConfigError(f"{cfg_path}: not JSON ({e})") from None
        kind = cfg.get("image_processor_type")
        if kind not in FAMILY + LLAVA:
            raise ConfigError(f"{cfg_path}: image_processor_type {kind!r} is not one Packer packs yet (Qwen2-VL, "
                              f"Qwen2.5-VL and Qwen3-VL: {', '.join(FAMILY)}; LLaVA: {', '.join(LLAVA)}); Gemma 3's "
                              "processor is not implemented (its image tokens attend to each other both ways)")
        self.family = "qwen" if kind in FAMILY else "llava"
        name = "Qwen2VLImageProcessorPil" if self.family == "qwen" else "CLIPImageProcessorPil"
        try:
            import PIL  # noqa: F401 - the PIL backends decode and resize with it
        except ImportError:
            raise ConfigError(f"{folder}: reading images needs Pillow (pip install 'packer[hf]')") from None
        try:
            import transformers

            cls = getattr(transformers, name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"{folder}: reading this image processor needs transformers with {name} (pip install "
                              f"'packer[hf]'): {e}") from None
        try:
            self._ip = cls.from_pretrained(str(folder))
        except Exception as e:  # noqa: BLE001 - whatever the installed transformers says, named
            raise ConfigError(f"{folder}: the installed transformers cannot load this image processor: "
                              f"{str(e).splitlines()[0][:300]}") from None
        ip = self._ip
        proc = _json(folder / "processor_config.json")
        mean, std = (tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))
                     for v in (ip.image_mean, ip.image_std))
        if self.family == "qwen":
            self.meta = ImageMeta(int(ip.patch_size), int(ip.temporal_patch_size), int(ip.merge_size),
                                  float(ip.rescale_factor), mean, std, bool(ip.do_rescale), bool(ip.do_normalize))
        else:  # LLaVA: whole images of a fixed size, tokens per image from the processor's patch size
            patch = proc.get("patch_size")
            if not isinstance(patch, int) or patch < 1:
                raise ConfigError(f"{folder}/processor_config.json: a LLaVA processor needs patch_size (the vision "
                                  "tower's), which decides each image's placeholder tokens")
            strategy = proc.get("vision_feature_select_strategy", "default")
            if strategy not in ("default", "full"):
                raise ConfigError(f"{folder}/processor_config.json: vision_feature_select_strategy {strategy!r} is not "
                                  "default or full")
            extra = int(proc.get("num_additional_image_tokens", 0)) - (1 if strategy == "default" else 0)
            self.meta = ImageMeta(patch, 1, 1, float(ip.rescale_factor), mean, std, bool(ip.do_rescale),
                                  bool(ip.do_normalize), mrope=False, extra_tokens=extra, layout="images")
        self.folder = folder
        self.image_token = "<|image_pad|>" if self.family == "qwen" else "<image>"
        for cfg_file in (proc, _json(folder / "tokenizer_config.json")):
            token = cfg_file.get("image_token")
            if isinstance(token, str) and token:
                self.image_token = token
                break

    def prepare(self, image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """(uint8 [3, H, W] pixels resized as the processor resizes, grid_thw in patches) of a PIL image.
        Raises ValueError where the processor refuses the image (an aspect ratio over 200)."""
        out = self._ip(images=[image], do_rescale=False, do_normalize=False, return_tensors="np")
        m = self.meta
        if self.family == "llava":  # resized and cropped to the tower's size: the image itself
            pixels = np.asarray(out["pixel_values"][0])
            _, H, W = pixels.shape
            if H % m.patch_size or W % m.patch_size:
                raise ValueError(f"the processor gives {H}x{W} images, not a multiple of patch_size {m.patch_size}")
            return np.ascontiguousarray(pixels.round().clip(0, 255).astype(np.uint8)), \
                (1, H // m.patch_size, W // m.patch_size)
        pv, grid = out["pixel_values"], [int(x) for x in out["image_grid_thw"][0]]
        t, gh, gw = grid
        P, M, T = m.patch_size, m.merge_size, m.temporal_patch_size
        x = pv.reshape(gh // M, gw // M, M, M, 3, T, P, P)[:, :, :, :, :, 0]
        pixels = x.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * P, gw * P)
        return np.ascontiguousarray(pixels.round().clip(0, 255).astype(np.uint8)), (t, gh, gw)

    def placeholders(self, grid: tuple[int, int, int]) -> int:
        """Placeholder tokens of an image of this grid: prod(grid_thw) / merge_size^2 (+ LLaVA's extra tokens)."""
        return int(np.prod(grid)) // self.meta.merge_size ** 2 + self.meta.extra_tokens


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def part_kind(part) -> str | None:
    """'image', 'video' or None (text and the rest) for a message content part."""
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind in IMAGE_PARTS or (kind is None and any(k in part for k in ("image", "image_url"))):
        return "image"
    if kind in VIDEO_PARTS or (kind is None and "video" in part):
        return "video"
    return None


def image_source(part: dict, where: str, line: int | None, field: str):
    """The part's image as given: bytes, or a path / URL string."""
    if part.get("type") == "image_url" or "image_url" in part:
        ref = part.get("image_url")
        ref = ref.get("url") if isinstance(ref, dict) else ref
    elif "path" in part and part.get("image") is None:
        ref = part.get("path")
    elif "url" in part and part.get("image") is None:
        ref = part.get("url")
    else:
        ref = part.get("image")
        if isinstance(ref, dict):  # a datasets Image struct: bytes, else its path
            ref = ref.get("bytes") if ref.get("bytes") is not None else ref.get("path")
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return bytes(ref)
    if isinstance(ref, str) and ref:
        return ref
    raise InputError(where, line, field, "is an image part with no image (expected image_url.url, image, path or url)",
                     "give each image part its bytes, a path or a URL")


def load_image(part: dict, where: str, line: int | None, field: str, base: str | None = None,
               files: dict | None = None):
    """The part's image decoded (PIL, RGB), or an InputError naming the record and part. A path is relative
    to `base` (the input file's folder, local or URL); `files` collects sha256 by path of what was read from
    files or URLs (not data: URIs), so a rerun knows when an image changed."""
    import hashlib

    from PIL import Image, UnidentifiedImageError

    ref = image_source(part, where, line, field)
    if isinstance(ref, str):
        if _DATA_URI.match(ref):
            try:
                ref = base64.b64decode(ref.split(",", 1)[1], validate=True)
            except (binascii.Error, ValueError):
                raise InputError(where, line, field, "is a data: URI whose base64 does not decode",
                                 "check how the image was encoded") from None
        elif ref.startswith("data:"):
            raise InputError(where, line, field, "is a data: URI that is not a base64 image",
                             "write data:image/<type>;base64,<bytes>")
        else:
            path = ref if is_url(ref) or base is None or ref.startswith("/") else f"{base.rstrip('/')}/{ref}"
            try:
                with open_input(path) as f:
                    ref = f.read()
                if files is not None:
                    files[path] = hashlib.sha256(ref).hexdigest()
            except InputError as e:
                raise InputError(where, line, field, f"names an image that cannot be read: {e}",
                                 "check the path (relative paths start at the input file's folder) or URL") from None
    try:
        img = Image.open(io.BytesIO(ref))
        img.load()
        return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(where, line, field, f"is not a readable image ({str(e).splitlines()[0][:120]}): "
                         "truncated or not an image", "fix or drop the image, or skip the record with --skip-bad") from None


def check_stores(records, limit: int = 8) -> None:
    """Before any work: every object store the image URLs of `records` (the first chunk of each input) name is
    reached once, with its first URL (at most `limit` stores); an unreachable store fails the run here, naming
    the record, the part and what was tried. A missing object elsewhere fails at its record (or is counted
    under --skip-bad)."""
    from urllib.parse import urlsplit

    from packer.core.storage import filesystem, unreachable

    seen: dict[tuple[str, str], tuple] = {}

    def walk(value, where, line, at):
        if isinstance(value, dict):
            if part_kind(value) == "image":
                try:
                    ref = image_source(value, where, line, at)
                except InputError:
                    return
                if isinstance(ref, str) and is_url(ref) and not ref.startswith("data:"):
                    u = urlsplit(ref)
                    seen.setdefault((u.scheme, u.netloc), (ref, where, line, at))
                return
            for k, v in value.items():
                walk(v, where, line, f"{at}.{k}" if at else str(k))
        elif isinstance(value, list):
            for k, v in enumerate(value):
                walk(v, where, line, f"{at}[{k}]")

    for rec in records:
        if not isinstance(rec.value, InputError):
            walk(rec.value, rec.where, rec.line, "")
        if len(seen) >= limit:
            break
    for ref, where, line, at in seen.values():
        try:
            fs, inner = filesystem(ref)
            fs.info(inner)
        except InputError as e:
            raise InputError(where, line, at, f"names an image at {ref} that cannot be read: {e.reason}",
                             e._init[4] or "check the URL and the store's credentials") from None
        except Exception as e:  # noqa: BLE001 - the store's answer, named
            err = unreachable(ref, e)
            raise InputError(where, line, at, f"names an image the store does not give: {err.reason}", err._init[4]) \
                from None


def changed_files(files: dict[str, str]) -> list[str]:
    """The image files or URLs (of a tokenized stage's manifest) whose bytes are no longer the recorded ones."""
    import hashlib

    changed = []
    for path, digest in sorted(files.items()):
        try:
            with open_input(path) as f:
                now = hashlib.sha256(f.read()).hexdigest()
        except (InputError, OSError):
            now = None
        if now != digest:
            changed.append(path)
    return changed


def folder_identity(folder: str | Path) -> dict[str, str]:
    """sha256 of each processor file that sizes images (preprocessor_config.json, processor_config.json)."""
    import hashlib

    out = {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        f = Path(folder) / name
        if f.is_file():
            out[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


class ImageSpans(list):
    """A chat's spans with its images' placeholders expanded; `images` holds (uint8 pixels, grid) per image,
    `files` the sha256 of each image file or URL read (by path)."""

    images: list
    files: dict


def image_spans(vision: VisionProcessor, chat, spans: list, where: str, line: int | None, field: str) -> ImageSpans:
    """The record's images loaded and sized, and the k-th placeholder the template wrote expanded to the k-th
    image's placeholder tokens. A template that wrote another number of placeholders than the record has
    images is refused (the images would not match their tokens)."""
    base = where.rsplit("/", 1)[0] if is_url(where) else str(Path(where).parent)
    prepared, files = [], {}
    for at, part in chat.images:
        img = load_image(part, where, line, at, base, files)
        try:
            prepared.append(vision.prepare(img))
        except ValueError as e:
            raise InputError(where, line, at, f"is refused by the processor: {str(e).splitlines()[0][:150]}",
                             "drop the image or the record (--skip-bad)") from None
    token = vision.image_token
    wrote = sum(text.count(token) for text, _ in spans)
    if wrote != len(prepared):
        raise InputError(where, line, field, f"the chat template wrote {wrote} image placeholders ({token}) for "
                         f"{len(prepared)} image parts", "render with the model's own chat template (the processor "
                         "folder's), which writes one per image part")
    counts = iter([vision.placeholders(g) for _, g in prepared])
    out = ImageSpans()
    for text, loss in spans:
        if token in text:
            pieces = text.split(token)
            text = pieces[0] + "".join(token * next(counts) + piece for piece in pieces[1:])
        out.append((text, loss))
    out.images = prepared
    out.files = files
    return out


__all__ = ["FAMILY", "ImageSpans", "changed_files", "check_stores", "folder_identity", "image_spans", "VisionProcessor", "image_source", "load_image", "part_kind"]
