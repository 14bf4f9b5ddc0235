"""Chats with images packed offline (--processor): images never split, every pack's placeholders match its
images, two capacities (tokens and vision patches), the loader's vision batches, a packed batch trained by a
tiny Qwen2.5-VL equal to its examples alone, and the bad-input errors. Images and the processor folder are
generated here."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("transformers")

from packer.core import config as C  # noqa: E402
from packer.core.errors import ConfigError, InputError  # noqa: E402
from packer.pipeline import pack  # noqa: E402

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
            "{% for c in m.content %}{% if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
            "{% else %}{{ c.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}")


def make_processor(folder, patch=14, mean=(0.48, 0.45, 0.40), std=(0.26, 0.26, 0.27)):
    """A Qwen-VL-style processor folder: a byte-level tokenizer with the vision tokens, a chat template that
    writes one placeholder per image part, and a small preprocessor_config.json (patch 14: Qwen2.5-VL; 16:
    Qwen3-VL)."""
    from tokenizers import Tokenizer

    from packer.build.load_tokenizer import load_tokenizer

    tok = Tokenizer.from_str(load_tokenizer("byte").json)
    tok.add_special_tokens(SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "eos_token": "<|im_end|>"}))
    f = 2 * patch
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": patch, "temporal_patch_size": 2,
        "merge_size": 2, "min_pixels": 4 * f * f, "max_pixels": 24 * f * f, "image_mean": list(mean),
        "image_std": list(std)}))
    return folder


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return make_processor(tmp_path_factory.mktemp("proc"))


def png(rng, h, w) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def records(n=40, seed=0, folder=None):
    """Chats with 0-3 images each of a long-tailed size mix: OpenAI image_url data: URIs, local paths and
    datasets-style image parts."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        content = [{"type": "text", "text": f"look {i}"}]
        for k in range(i % 4):
            big = rng.random() < 0.2
            h, w = (int(rng.integers(150, 220)), int(rng.integers(150, 220))) if big else \
                (int(rng.integers(30, 90)), int(rng.integers(30, 90)))
            data = png(rng, h, w)
            if k == 0:
                content.append({"type": "image_url", "image_url": {"url": "data:image/png;base64," +
                                                                   base64.b64encode(data).decode()}})
            elif k == 1 and folder is not None:
                (folder / f"img{i}.png").write_bytes(data)
                content.append({"type": "image", "path": f"img{i}.png"})
            else:
                content.append({"type": "image", "image": "data:image/png;base64," + base64.b64encode(data).decode()})
        out.append({"messages": [{"role": "user", "content": content},
                                 {"role": "assistant", "content": f"answer {i} " * (i % 5 + 1)}]})
    return out


def _write(path, recs):
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return path


def _pack(tmp_path, processor, recs, **plan):
    data = _write(tmp_path / "d.jsonl", recs)
    return pack([str(data)], tmp_path / "run", tokenizer=str(processor),
                tokenize_config=C.TokenizeConfig(kind="chat", processor=str(processor)),
                plan_config=C.PlanConfig(**{"pack_len": 512, "algorithm": "ffd", **plan}))


def test_every_pack_holds_its_images_placeholders_and_both_capacities(tmp_path, processor):
    from packer.core.vision import image_runs, placeholders
    from packer.train.reader import PackedShards

    _pack(tmp_path, processor, records(60, folder=tmp_path), max_patches=300)
    ds = PackedShards(tmp_path / "run")
    token = ds.images_meta["image_token_id"]
    images = patches = 0
    for p in range(len(ds)):
        v = ds.arrays(p)
        grids, pixels = ds.images_of(p)
        ids = np.asarray(v["tokens"])
        assert int((ids == token).sum()) == int(placeholders(grids, 2).sum()), f"pack {p}"
        assert len(image_runs(ids, token)[0]) == len(grids), f"pack {p}: an image's placeholders split"
        assert int(grids.prod(axis=1).sum()) <= 300 and len(ids) <= 512
        # every segment's images sit inside it: the runs of each segment match its own images
        assert [px.shape for px in pixels] == [(3, h * 14, w * 14) for _, h, w in grids.tolist()]
        images += len(grids)
        patches += int(grids.prod(axis=1).sum())
    assert images == sum(i % 4 for i in range(60)) and patches > 300
    report = json.loads((tmp_path / "run" / "report.json").read_text())["images"]
    assert report["images"] == images and report["vision_patches"] == patches
    assert "images:" in (tmp_path / "run" / "report.md").read_text()


def test_the_loaders_vision_batches_and_patch_balance(tmp_path, processor):
    from packer.train.loader import PackedLoader

    _pack(tmp_path, processor, records(80), max_patches=300)
    for flatten in (False, True):
        for b in PackedLoader(tmp_path / "run", 2, flatten=flatten, seed=1):
            n = b["input_ids"].numel()
            assert b["position_ids"].shape == (4, *b["input_ids"].shape)
            assert b["pixel_values"].shape == (int(b["image_grid_thw"].prod(dim=1).sum()), 3 * 2 * 14 * 14)
            assert int(b["position_ids"][0].reshape(-1)[0]) == 0 and n > 0
    from packer.train.loader import imbalance, pack_costs

    by_tokens = PackedLoader(tmp_path / "run", 2, world_size=4, seed=0, balance="tokens")
    by_patches = PackedLoader(tmp_path / "run", 2, world_size=4, seed=0, balance="patches")
    patches = pack_costs(by_tokens.dataset, "patches")
    assert patches.sum() == sum(int(by_tokens.dataset.images_of(p)[0].prod(axis=1).sum()) for p in range(len(patches)))
    dealt_by_patches = imbalance(patches, by_patches._plan())["step_mean"]
    assert dealt_by_patches <= imbalance(patches, by_tokens._plan())["step_mean"]
    with pytest.raises(ConfigError, match="this run has no images"):
        from conftest import sft_records, write_jsonl

        plain = write_jsonl(tmp_path / "p.jsonl", sft_records(20))
        pack([str(plain)], tmp_path / "plain", plan_config=C.PlanConfig(pack_len=256))
        PackedLoader(tmp_path / "plain", 1, balance="patches")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_packed_batch_trains_a_tiny_vl_model_equal_to_its_examples_alone(tmp_path, processor, family):
    import copy

    import torch

    from packer.train.hf.integration import batch_to_kwargs, use_packer_attention
    from packer.train.loader import PackedLoader
    from packer.train.vision import pixel_values
    from packer.core.vision import ImageMeta

    if family == "qwen3_vl":
        (tmp_path / "proc3").mkdir()
        processor = make_processor(tmp_path / "proc3", patch=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    _pack(tmp_path, processor, records(24), max_patches=400)
    loader = PackedLoader(tmp_path / "run", 2, flatten=True, seed=0)
    ds = loader.dataset
    token = ds.images_meta["image_token_id"]
    torch.manual_seed(0)
    alone = _tiny_qwen25_vl(token) if family == "qwen2_5_vl" else _tiny_qwen3_vl(token)
    packed = use_packer_attention(copy.deepcopy(alone))
    meta = ImageMeta(**{**ds.images_meta["meta"], "image_mean": tuple(ds.images_meta["meta"]["image_mean"]),
                        "image_std": tuple(ds.images_meta["meta"]["image_std"])})
    batch = next(iter(loader))
    assert len(batch["image_grid_thw"]) >= 2 and batch["cu_seqlens"].numel() >= 4
    out = packed(**batch_to_kwargs(batch), use_cache=False)
    labels = batch["labels"]
    ids, cu = batch["input_ids"], batch["cu_seqlens"].long()
    # each example alone: its own ids, images and labels (its first label is -100: nothing predicts it)
    grids = batch["image_grid_thw"]
    seen, total, count = 0, 0.0, 0
    for k in range(len(cu) - 1):
        a, b = int(cu[k]), int(cu[k + 1])
        e_ids = ids[:, a:b]
        n_img = len(__import__("packer.core.vision", fromlist=["image_runs"]).image_runs(e_ids[0].numpy(), token)[0])
        kw = {}
        if n_img:
            g = grids[seen:seen + n_img]
            start = int(grids[:seen].prod(dim=1).sum())
            kw = dict(pixel_values=batch["pixel_values"][start:start + int(g.prod(dim=1).sum())], image_grid_thw=g)
            seen += n_img
        res = alone(input_ids=e_ids, mm_token_type_ids=(e_ids == token).long(), labels=labels[:, a:b],
                    use_cache=False, **kw)
        assert (res.logits - out.logits[:, a:b]).abs().max() < 1e-5, f"example {k}"
        m = int((labels[:, a + 1:b] != -100).sum())
        total, count = total + res.loss * m, count + m
    assert seen == len(grids)
    assert abs(float(out.loss) - float(total / count)) < 1e-5
    # the loader's pixel values are the processor's for the stored pixels
    _, pixels = ds.images_of(int(batch["pack_index"][0]))
    assert np.array_equal(pixel_values(pixels[:1], meta), batch["pixel_values"][:len(pixel_values(pixels[:1], meta))].numpy())


def test_bad_images_and_processors_say_what_to_do(tmp_path, processor):
    rng = np.random.default_rng(1)
    good = "data:image/png;base64," + base64.b64encode(png(rng, 40, 50)).decode()
    truncated = "data:image/png;base64," + base64.b64encode(png(rng, 40, 50)[:60]).decode()

    def chat(*parts):
        return {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, *parts]},
                             {"role": "assistant", "content": "a"}]}

    img = lambda url: {"type": "image_url", "image_url": {"url": url}}  # noqa: E731
    with pytest.raises(InputError, match=r"d\.jsonl:2: field 'messages\[0\]\.content\[2\]' is not a readable image"):
        _pack(tmp_path, processor, [chat(img(good)), chat(img(good), img(truncated))])
    with pytest.raises(InputError, match=r"messages\[0\]\.content\[1\].*video part"):
        _pack(tmp_path, processor, [chat({"type": "video", "video": "v.mp4"})])
    with pytest.raises(InputError, match=r"content\[1\].*names an image that cannot be read"):
        _pack(tmp_path, processor, [chat({"type": "image", "path": "nowhere.png"})])
    # --skip-bad counts it instead
    data = _write(tmp_path / "d.jsonl", [chat(img(good)), chat(img(truncated))] * 3)
    m = pack([str(data)], tmp_path / "skip", tokenizer=str(processor),
             tokenize_config=C.TokenizeConfig(kind="chat", processor=str(processor), skip_bad=True, max_bad="50%"),
             plan_config=C.PlanConfig(pack_len=512, algorithm="ffd"))
    assert m["skipped_records"] == 3
    with pytest.raises(InputError, match=r"vision patches, more than --max-patches 10; an image is never split"):
        _pack(tmp_path, processor, [chat(img(good))], max_patches=10)
    with pytest.raises(InputError, match=r"longer than --pack-len 16; an example with images is never cut"):
        _pack(tmp_path, processor, [chat(img(good))], pack_len=16)
    with pytest.raises(ConfigError, match=r"--algorithm ortools does not take a second capacity"):
        _pack(tmp_path, processor, [chat(img(good))], max_patches=1000, algorithm="ortools")
    other = tmp_path / "other"
    other.mkdir()
    (other / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "SiglipImageProcessor"}))
    with pytest.raises(ConfigError, match="SiglipImageProcessor.*not one Packer packs yet"):
        pack([str(data)], tmp_path / "o", tokenizer=str(processor),
             tokenize_config=C.TokenizeConfig(kind="chat", processor=str(other)))
    with pytest.raises(ConfigError, match="--processor.*not --kind sft"):
        C.TokenizeConfig(kind="sft", processor=str(processor))
    # the same run without --processor refuses the image part and says how to pack it
    with pytest.raises(InputError, match=r"pass --processor for image parts"):
        pack([str(data)], tmp_path / "t", tokenizer=str(processor), tokenize_config=C.TokenizeConfig(kind="chat"))


def test_a_processor_without_pillow_says_how_to_install_it(processor, monkeypatch):
    """Pillow comes with the hf extra; where it is missing, --processor is refused before any work."""
    import sys

    from packer.build.images import VisionProcessor

    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL raises ImportError
    with pytest.raises(ConfigError, match=r"reading images needs Pillow \(pip install 'packer\[hf\]'\)"):
        VisionProcessor(processor)


def test_runs_with_images_are_byte_identical_on_rerun(tmp_path, processor):
    import hashlib

    recs = records(20)
    digests = []
    for k in range(2):
        data = _write(tmp_path / "d.jsonl", recs)
        pack([str(data)], tmp_path / f"r{k}", tokenizer=str(processor),
             tokenize_config=C.TokenizeConfig(kind="chat", processor=str(processor)),
             plan_config=C.PlanConfig(pack_len=512, algorithm="ffd", max_patches=300))
        digests.append(sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest())
                              for p in (tmp_path / f"r{k}" / "shards").iterdir()))
    assert digests[0] == digests[1] and any(n.startswith("images-") for n, _ in digests[0])


def test_an_image_file_changed_since_the_run_is_read_again(tmp_path, processor):
    """Images named by path are not part of the input's bytes: the run records each one's sha256 and a rerun
    re-tokenizes when one changed (never stale pixels), and reuses the stage when none did."""
    rng = np.random.default_rng(4)
    (tmp_path / "a.png").write_bytes(png(rng, 60, 60))
    recs = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image", "path": "a.png"}]},
                          {"role": "assistant", "content": "a"}]}]
    _pack(tmp_path, processor, recs)
    first = (tmp_path / "run" / "shards" / "images-00000.bin").read_bytes()
    stamp = (tmp_path / "run" / "tokenized" / "chunk-00000.arrow").stat().st_mtime_ns
    _pack(tmp_path, processor, recs)
    assert (tmp_path / "run" / "tokenized" / "chunk-00000.arrow").stat().st_mtime_ns == stamp, "reused when unchanged"
    (tmp_path / "a.png").write_bytes(png(rng, 60, 60))
    _pack(tmp_path, processor, recs)
    assert (tmp_path / "run" / "shards" / "images-00000.bin").read_bytes() != first


def test_inspect_shows_each_image_as_one_marker(tmp_path, processor):
    from click.testing import CliRunner

    from packer.cli import main

    _pack(tmp_path, processor, records(8))
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "run"), "--pack", "0", "--tokenizer", str(processor)])
    assert res.exit_code == 0, res.output
    assert "[image 1x" in res.output and " images" in res.output


def _tiny_qwen25_vl(token):
    import transformers

    cfg = transformers.Qwen2_5_VLConfig(
        image_token_id=token, video_token_id=token + 1, vision_start_token_id=259, vision_end_token_id=260,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        text_config=dict(vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}))
    return transformers.Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa").float()


def _tiny_qwen3_vl(token):
    import transformers

    cfg = transformers.Qwen3VLConfig(
        image_token_id=token, video_token_id=token + 1, vision_start_token_id=259, vision_end_token_id=260,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
                           deepstack_visual_indexes=[0, 1]),
        text_config=dict(vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2],
                                          "mrope_interleaved": True}))
    return transformers.Qwen3VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa").float()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_one_trainer_step_on_packed_images_equals_the_examples_alone(tmp_path, processor, family):
    """Trainer + PackedCollator on a run with images (PackedShards items carry pixel values, grids and [4, n]
    positions): one SGD step equals the same step taken on every example alone (loss and weights); the
    collator refuses images without their positions."""
    import copy

    import torch
    import transformers

    from packer.core.vision import image_runs
    from packer.hf import PackedCollator, use_packer_attention
    from packer.train.reader import PackedShards

    if family == "qwen3_vl":
        (tmp_path / "proc3").mkdir()
        processor = make_processor(tmp_path / "proc3", patch=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    _pack(tmp_path, processor, records(16), max_patches=400)
    ds = PackedShards(tmp_path / "run")
    token = ds.images_meta["image_token_id"]
    torch.manual_seed(0)
    ref = _tiny_qwen25_vl(token) if family == "qwen2_5_vl" else _tiny_qwen3_vl(token)
    model = use_packer_attention(copy.deepcopy(ref))
    two = torch.utils.data.Subset(ds, [0, 1])
    args = transformers.TrainingArguments(str(tmp_path / "hf"), per_device_train_batch_size=2, max_steps=1,
                                          learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
                                          weight_decay=0.0, max_grad_norm=0.0, remove_unused_columns=False,
                                          report_to=[], use_cpu=True, save_strategy="no", seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=two, data_collator=PackedCollator())
    loss = trainer.train().training_loss

    # the same step, every example alone: the mean token loss over both packs, then one SGD step
    total, count = 0.0, 0
    for p in (0, 1):
        item = ds[p]
        cu = item["cu_seqlens"].long()
        grids, start = item["image_grid_thw"], 0
        for k in range(len(cu) - 1):
            a, b = int(cu[k]), int(cu[k + 1])
            ids = item["input_ids"][a:b][None]
            n_img = len(image_runs(ids[0].numpy(), token)[0])
            kw = {}
            if n_img:
                g = grids[:n_img]
                rows = int(g.prod(dim=1).sum())
                kw = dict(pixel_values=item["pixel_values"][start:start + rows], image_grid_thw=g)
                grids, start = grids[n_img:], start + rows
            labels = item["labels"][a:b][None]
            logits = ref(input_ids=ids, mm_token_type_ids=(ids == token).long(), use_cache=False, **kw).logits
            total = total + torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100,
                                                              reduction="sum")
            count += int((labels[0, 1:] != -100).sum())
    (total / count).backward()
    with torch.no_grad():
        update, off = 0.0, 0.0
        for p_ref, p_new in zip(ref.parameters(), model.parameters()):
            if p_ref.grad is None:
                continue
            stepped = p_ref - 0.5 * p_ref.grad
            update = max(update, float((0.5 * p_ref.grad).abs().max()))
            off = max(off, float((stepped - p_new).abs().max()))
    assert abs(loss - float(total / count)) <= 1e-5 * abs(float(total / count))
    assert off <= 1e-4 * update, (off, update)
    item = ds[0]
    with pytest.raises(ConfigError, match="has images but no \\[4, n\\] position_ids"):
        PackedCollator()([{**item, "position_ids": item["position_ids"][0]}])


def make_llava_processor(folder, size=56, patch=14):
    """A LLaVA-1.5-style processor folder: CLIP image processor (shortest edge, centre crop), processor_config
    with the tower's patch size and the default feature strategy, a tokenizer with <image>."""
    from tokenizers import Tokenizer

    from packer.build.load_tokenizer import load_tokenizer

    tok = Tokenizer.from_str(load_tokenizer("byte").json)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<image>"])
    tok.save(str(folder / "tokenizer.json"))
    tmpl = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
            "{% for c in m.content %}{% if c.type == 'image' %}<image>{% else %}{{ c.text }}{% endif %}{% endfor %}"
            "{% endif %}<|im_end|>\n{% endfor %}")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": tmpl, "eos_token": "<|im_end|>"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": size},
        "crop_size": {"height": size, "width": size}, "do_center_crop": True, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    (folder / "processor_config.json").write_text(json.dumps({
        "patch_size": patch, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1,
        "image_token": "<image>"}))
    return folder


@pytest.mark.slow
def test_llava_style_runs_pack_and_train_equal_to_their_examples_alone(tmp_path):
    """LLaVA (1.5): fixed-size images, (size/patch)^2 placeholders each (the CLS token dropped), plain causal
    image tokens and 1-D positions: a packed loader batch through a tiny Llava with Packer attention equals
    every example alone, and its pixel values equal the CLIP processor's."""
    import copy

    import torch
    import transformers
    from transformers import CLIPImageProcessorPil

    from packer.train.hf.integration import batch_to_kwargs, use_packer_attention
    from packer.train.loader import PackedLoader

    (tmp_path / "llava").mkdir()
    proc = make_llava_processor(tmp_path / "llava")
    data = _write(tmp_path / "d.jsonl", records(20))
    pack([str(data)], tmp_path / "run", tokenizer=str(proc),
         tokenize_config=C.TokenizeConfig(kind="chat", processor=str(proc)),
         plan_config=C.PlanConfig(pack_len=512, algorithm="ffd", max_patches=200))
    loader = PackedLoader(tmp_path / "run", 2, flatten=True, seed=0)
    token = loader.dataset.images_meta["image_token_id"]
    batch = next(iter(loader))
    assert "image_grid_thw" not in batch and batch["position_ids"].dim() == 2
    assert batch["pixel_values"].shape[1:] == (3, 56, 56)
    assert int((batch["input_ids"] == token).sum()) == 16 * len(batch["pixel_values"])
    cfg = transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=56, patch_size=14),
        text_config=dict(model_type="llama", vocab_size=token + 1, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        image_token_index=token, vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(0)
    alone = transformers.LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa").float()
    packed = use_packer_attention(copy.deepcopy(alone))
    out = packed(**batch_to_kwargs(batch), use_cache=False)
    cu, ids, seen = batch["cu_seqlens"].long(), batch["input_ids"], 0
    for k in range(len(cu) - 1):
        a, b = int(cu[k]), int(cu[k + 1])
        n = int((ids[0, a:b] == token).sum()) // 16  # 16 placeholders an image (adjacent images' runs touch)
        kw = dict(pixel_values=batch["pixel_values"][seen:seen + n]) if n else {}
        seen += n
        logits = alone(input_ids=ids[:, a:b], use_cache=False, **kw).logits
        assert (logits - out.logits[:, a:b]).abs().max() < 1e-5, f"example {k}"
    assert seen == len(batch["pixel_values"])
    ref = CLIPImageProcessorPil.from_pretrained(str(proc))
    from PIL import Image

    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    from packer.build.images import VisionProcessor
    from packer.train.vision import pixel_values

    vp = VisionProcessor(proc)
    px, grid = vp.prepare(im)
    assert grid == (1, 4, 4) and vp.placeholders(grid) == 16
    assert np.array_equal(pixel_values([px], vp.meta), ref(images=[im], return_tensors="np")["pixel_values"])


def test_an_unreachable_image_store_fails_before_any_work(tmp_path, processor, monkeypatch):
    """An image URL whose store cannot be reached fails the run before tokenizing, naming the record and part
    and what was tried; nothing is written."""
    pytest.importorskip("s3fs")
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    recs = records(3) + [{"messages": [{"role": "user", "content": [
        {"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": "s3://nowhere/img.png"}}]},
        {"role": "assistant", "content": "a"}]}]
    try:
        with pytest.raises(InputError, match=r"d\.jsonl:4: field 'messages\[0\]\.content\[1\]' names an image .*"
                                             r"tried endpoint http://127\.0\.0\.1:9"):
            _pack(tmp_path, processor, recs)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert not (tmp_path / "run" / "tokenized" / "manifest.json").exists()



def test_two_capacity_plans_hold_every_item_once_within_both_capacities_and_even_out_patches():
    """first_fit_two then even_patches, over random items (hypothesis): every item in exactly one pack, tokens
    <= pack_len and patches <= max_patches in every pack, as many packs as first fit made, and the packs' patch
    spread (max - min) never wider than before."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from packer.build.planners.two_capacities import even_patches, first_fit_two

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 90)), min_size=1, max_size=80),
           st.integers(300, 700), st.integers(90, 400))
    def check(items, pack_len, max_patches):
        lengths = np.array([t for t, _ in items])
        patches = np.array([p for _, p in items])
        order, offsets = first_fit_two(lengths, patches, pack_len, max_patches)
        spread = lambda o, off: np.ptp([patches[o[a:b]].sum() for a, b in zip(off[:-1], off[1:])])  # noqa: E731
        before = spread(order, offsets)
        o2, off2 = even_patches(order, offsets, lengths, patches, pack_len, max_patches)
        assert sorted(o2.tolist()) == list(range(len(items))) and len(off2) == len(offsets)
        for a, b in zip(off2[:-1], off2[1:]):
            assert b > a and lengths[o2[a:b]].sum() <= pack_len and patches[o2[a:b]].sum() <= max_patches
        assert spread(o2, off2) <= before

    check()


def test_datasets_image_structs_from_parquet(tmp_path, processor):
    """The datasets layout: a Parquet column of messages whose image parts hold an Image struct {bytes, path}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    rows = []
    for i in range(6):
        parts = [{"type": "text", "text": f"look {i}", "image": None}]
        parts += [{"type": "image", "text": None, "image": {"bytes": png(rng, 50 + 10 * k, 60), "path": None}}
                  for k in range(i % 3)]
        rows.append({"messages": [{"role": "user", "content": parts},
                                  {"role": "assistant", "content": [{"type": "text", "text": f"a{i}", "image": None}]}]})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    pack([str(tmp_path / "d.parquet")], tmp_path / "run", tokenizer=str(processor),
         tokenize_config=C.TokenizeConfig(kind="chat", processor=str(processor)),
         plan_config=C.PlanConfig(pack_len=512, algorithm="ffd"))
    from packer.train.reader import PackedShards

    ds = PackedShards(tmp_path / "run")
    assert sum(len(ds.images_of(p)[0]) for p in range(len(ds))) == sum(i % 3 for i in range(6))
