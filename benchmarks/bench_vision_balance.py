"""Vision work per rank per step on a long-tailed image-size mix (issue 31's goal: max/mean at most 1.05).

Generates chats with 0-4 images each, sizes long-tailed (log-normal sides, a few large), packs them with a
Qwen2.5-VL-style processor folder built here (byte tokenizer with the vision tokens, patch 14, merge 2) at
pack_len 4096 and --max-patches, then deals each step's packs to 4 ranks by tokens (the default) and by vision
patches (balance="patches"), and by patches with the epoch's order grouped by cost (group_by_cost) and prints, per batch size, the mean and worst per-step max/mean of the ranks'
vision patches, with the tokens' beside them. Run: python benchmarks/bench_vision_balance.py [--records N]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import tempfile
from pathlib import Path

import numpy as np


def processor(folder: Path) -> None:
    from tokenizers import Tokenizer

    from packer.build.load_tokenizer import load_tokenizer

    tok = Tokenizer.from_str(load_tokenizer("byte").json)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"])
    tok.save(str(folder / "tokenizer.json"))
    tmpl = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
            "{% for c in m.content %}{% if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
            "{% else %}{{ c.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": tmpl, "eos_token": "<|im_end|>"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "min_pixels": 4 * 28 * 28, "max_pixels": 256 * 28 * 28, "image_mean": [0.48, 0.45, 0.40],
        "image_std": [0.26, 0.26, 0.27]}))


def chats(n: int, seed: int = 0) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        content = [{"type": "text", "text": "describe " * int(rng.integers(1, 40))}]
        for _ in range(int(rng.integers(0, 5))):
            h, w = (int(np.clip(rng.lognormal(4.3, 0.6), 28, 448)) for _ in range(2))
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
            content.append({"type": "image_url", "image_url": {"url": "data:image/png;base64," +
                                                               base64.b64encode(buf.getvalue()).decode()}})
        out.append({"messages": [{"role": "user", "content": content},
                                 {"role": "assistant", "content": "it is " * int(rng.integers(1, 200))}]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1500)
    ap.add_argument("--max-patches", type=int, default=4096)
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--group", type=int, default=64, help="group_by_cost window, in packs, for the grouped rows")
    a = ap.parse_args()
    from packer.core import config as C
    from packer.pipeline import pack
    from packer.train.loader import PackedLoader, imbalance, pack_costs

    tmp = Path(tempfile.mkdtemp(prefix="bench-vision-"))
    (tmp / "proc").mkdir()
    processor(tmp / "proc")
    (tmp / "d.jsonl").write_text("\n".join(json.dumps(r) for r in chats(a.records)) + "\n")
    pack([str(tmp / "d.jsonl")], tmp / "run", tokenizer=str(tmp / "proc"),
         tokenize_config=C.TokenizeConfig(kind="chat", processor=str(tmp / "proc")),
         plan_config=C.PlanConfig(pack_len=4096, algorithm="ffd", max_patches=a.max_patches))
    base = PackedLoader(tmp / "run", 1, world_size=a.world)
    patches = pack_costs(base.dataset, "patches")
    tokens = pack_costs(base.dataset, "tokens")
    per_image = np.concatenate([im.image_grid.reshape(-1, 3).prod(axis=1) for im in base.dataset.images])
    print(f"{a.records} chats, {len(per_image)} images (patches per image: median {int(np.median(per_image))}, "
          f"p99 {int(np.percentile(per_image, 99))}, max {int(per_image.max())}), {len(patches)} packs at 4096 tokens "
          f"and --max-patches {a.max_patches}; {a.world} ranks")
    print("| batch | dealt by | patches max/mean per step (mean, worst) | patches, weighted by the steps' work | "
          "tokens max/mean per step (mean, worst) |")
    print("|---|---|---|---|---|")
    for b in (1, 2, 4):
        for how, group in (("tokens", 0), ("patches", 0), ("patches", a.group)):
            plan = PackedLoader(tmp / "run", b, world_size=a.world, balance=how, group_by_cost=group)._plan()
            ip, it = imbalance(patches, plan), imbalance(tokens, plan)
            name = f"{how}, grouped by cost ({group} packs)" if group else how
            print(f"| {b} | {name} | {1 + ip['step_mean']:.3f}, {1 + ip['step_max']:.3f} | {1 + ip['step_weighted']:.3f} | "
                  f"{1 + it['step_mean']:.3f}, {1 + it['step_max']:.3f} |")


if __name__ == "__main__":
    main()
