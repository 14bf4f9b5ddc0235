"""The on-disk cost of the image format: resized uint8 pixels (what Packer stores) against the original bytes (PNG,
JPEG q90) that would be decoded and resized at every read: disk, and load time per batch of 8 images into
pixel_values (64 synthetic photograph-like images, long-tailed sizes; Qwen2.5-VL-style processor).
Run: python benchmarks/bench_image_storage.py
"""
import io, tempfile, time, sys
from pathlib import Path
import numpy as np
from PIL import Image
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vision_balance import processor
from packer.build.images import VisionProcessor
from packer.train.vision import pixel_values
tmp = Path(tempfile.mkdtemp()); processor(tmp)
proc = VisionProcessor(tmp)
rng = np.random.default_rng(0)
def photo(h, w):  # smooth content: gradients and blobs with mild noise, as photographs compress
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 / w), (y * 255 / h), ((x + y) * 127 / (h + w))], -1)
    for _ in range(6):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(10, max(11, min(h, w) // 2))
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))
imgs = [photo(int(np.clip(rng.lognormal(5.5, 0.5), 64, 1024)), int(np.clip(rng.lognormal(5.5, 0.5), 64, 1024))) for _ in range(64)]
png, jpg, raw = [], [], []
for im in imgs:
    b = io.BytesIO(); im.save(b, "PNG"); png.append(b.getvalue())
    b = io.BytesIO(); im.save(b, "JPEG", quality=90); jpg.append(b.getvalue())
    raw.append(proc.prepare(im))
print("images", len(imgs), "orig px (M)", sum(im.size[0]*im.size[1] for im in imgs)/1e6)
print("disk MB: resized uint8", sum(p.nbytes for p, _ in raw)/1e6, "PNG", sum(map(len, png))/1e6, "JPEG q90", sum(map(len, jpg))/1e6)
batch = 8
def t(fn, reps=3):
    best = 1e9
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t0)
    return best / (len(imgs) / batch)
stored = t(lambda: [pixel_values([p for p, _ in raw[i:i+batch]], proc.meta) for i in range(0, len(raw), batch)])
def from_bytes(blobs):
    for i in range(0, len(blobs), batch):
        px = [proc.prepare(Image.open(io.BytesIO(b)).convert("RGB"))[0] for b in blobs[i:i+batch]]
        pixel_values(px, proc.meta)
print(f"load per batch of {batch} images, ms: stored pixels {stored*1e3:.2f}  PNG decode+resize {t(lambda: from_bytes(png))*1e3:.2f}  JPEG {t(lambda: from_bytes(jpg))*1e3:.2f}")
