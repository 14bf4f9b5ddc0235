"""Vision-language examples packed: Packer's mRoPE positions equal the models' own get_rope_index per example,
its pixel_values equal the processor's, and tiny random Qwen2.5-VL / Qwen3-VL trained on a packed row (two
images in one example, one in the next, one example without images) equal each example alone: logits, loss
and the gradients of the language model and the vision tower. Images are generated here."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")

from packer.core.errors import ConfigError  # noqa: E402
from packer.core.vision import PlaceholderError, image_runs, mrope_positions, packed_positions, placeholders  # noqa: E402

IDS = dict(image_token_id=262, video_token_id=263, vision_start_token_id=259, vision_end_token_id=260)
TEXT = dict(vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)
FAMILIES = {
    "qwen2_5_vl": dict(
        config=lambda: transformers.Qwen2_5_VLConfig(**IDS, vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
            text_config=dict(**TEXT, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                       "mrope_section": [2, 3, 3]})),
        model="Qwen2_5_VLForConditionalGeneration", patch=14,
        processor=dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])),
    "qwen3_vl": dict(
        config=lambda: transformers.Qwen3VLConfig(**IDS, vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256, deepstack_visual_indexes=[0, 1]),
            text_config=dict(**TEXT, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                                   "mrope_section": [4, 2, 2], "mrope_interleaved": True})),
        model="Qwen3VLForConditionalGeneration", patch=16,
        processor=dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])),
}
SIZES = [(112, 140), (200, 120), (150, 150)]  # A's two images, then B's


def processor_folder(tmp_path, family):
    f = FAMILIES[family]
    folder = tmp_path / family
    folder.mkdir()
    factor = f["patch"] * 2
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": f["patch"], "temporal_patch_size": 2,
        "merge_size": 2, "min_pixels": 4 * factor * factor, "max_pixels": 24 * factor * factor,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "resample": 3, **f["processor"]}))
    return folder


def images(seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def examples(proc, imgs, seed=0):
    """Three examples as token ids (text bytes, each image as vision_start, its placeholders, vision_end):
    A with two images, B with one, C with none; and per example its images' pixels and grids."""
    rng = np.random.default_rng(seed)
    prepared = [proc.prepare(im) for im in imgs]

    def text(n):
        return rng.integers(0, 256, n).tolist()

    def image(k):
        return [259] + [262] * proc.placeholders(prepared[k][1]) + [260]

    spec = [(text(5) + image(0) + text(7) + image(1) + text(9), [0, 1]), (text(4) + image(2) + text(11), [2]),
            (text(17), [])]
    return [(np.array(ids), [prepared[k][0] for k in ks], np.array([prepared[k][1] for k in ks], np.int64).reshape(-1, 3))
            for ids, ks in spec]


def model_of(family, attn="sdpa"):
    torch.manual_seed(0)
    f = FAMILIES[family]
    return getattr(transformers, f["model"])._from_config(f["config"](), attn_implementation=attn).float()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_positions_equal_the_models_get_rope_index_per_example(tmp_path, family):
    from packer.build.images import VisionProcessor

    proc = VisionProcessor(processor_folder(tmp_path, family))
    model = model_of(family)
    exs = examples(proc, images())
    for ids, _, grids in exs:
        t = torch.from_numpy(ids)[None]
        want, _ = model.model.get_rope_index(t, mm_token_type_ids=(t == 262).long(),
                                             image_grid_thw=torch.from_numpy(grids) if len(grids) else None)
        assert np.array_equal(mrope_positions(ids, 262, grids, 2), want[:, 0].numpy())
    ids = np.concatenate([e[0] for e in exs])
    cu = np.concatenate([[0], np.cumsum([len(e[0]) for e in exs])])
    pos = packed_positions(ids, cu, 262, np.concatenate([e[2] for e in exs]), 2)
    for k, (e_ids, _, grids) in enumerate(exs):
        assert np.array_equal(pos[0, cu[k]:cu[k + 1]], np.arange(len(e_ids)))
        assert np.array_equal(pos[1:, cu[k]:cu[k + 1]], mrope_positions(e_ids, 262, grids, 2))
    # placeholders per image: prod(grid) / merge^2, and every run of them one image
    assert (ids == 262).sum() == placeholders(np.concatenate([e[2] for e in exs]), 2).sum()
    with pytest.raises(PlaceholderError, match="split between two examples"):
        packed_positions(ids, np.array([0, int(image_runs(exs[0][0], 262)[0][1]) + 2, len(ids)]), 262,
                         np.concatenate([e[2] for e in exs]), 2)
    with pytest.raises(PlaceholderError, match="placeholders, not"):
        mrope_positions(exs[1][0][:-14], 262, exs[1][2] * np.array([1, 1, 2]), 2)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pixel_values_equal_the_processors(tmp_path, family):
    from transformers import Qwen2VLImageProcessorPil

    from packer.build.images import VisionProcessor
    from packer.train.vision import pixel_values

    folder = processor_folder(tmp_path, family)
    proc = VisionProcessor(folder)
    ref = Qwen2VLImageProcessorPil.from_pretrained(str(folder))
    for im in images(3):
        pixels, grid = proc.prepare(im)
        want = ref(images=[im], return_tensors="np")
        assert list(want["image_grid_thw"][0]) == list(grid)
        got = pixel_values([pixels], proc.meta)
        assert got.dtype == np.float32 and np.array_equal(got, want["pixel_values"])


def _losses(logits, ids):
    """Per-token next-token loss within one example; image placeholders are not targets."""
    labels = ids.clone()
    labels[labels == 262] = -100
    return torch.nn.functional.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100,
                                             reduction="none")


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_equals_unpacked_logits_loss_and_gradients(tmp_path, family):
    from packer.build.images import VisionProcessor
    from packer.train.hf.integration import use_packer_attention
    from packer.train.vision import packed_inputs, pixel_values

    proc = VisionProcessor(processor_folder(tmp_path, family))
    exs = examples(proc, images())
    alone_model = model_of(family).train()
    packed_model = use_packer_attention(copy.deepcopy(alone_model))

    total, alone_logits = 0.0, []
    for ids, pixels, grids in exs:
        t = torch.from_numpy(ids)[None]
        kw = dict(input_ids=t, mm_token_type_ids=(t == 262).long(), use_cache=False)
        if len(grids):
            kw.update(pixel_values=torch.from_numpy(pixel_values(pixels, proc.meta)),
                      image_grid_thw=torch.from_numpy(grids))
        logits = alone_model(**kw).logits
        alone_logits.append(logits.detach())
        total = total + _losses(logits, t).sum()
    total.backward()

    ids = torch.from_numpy(np.concatenate([e[0] for e in exs]))[None]
    cu = torch.tensor(np.concatenate([[0], np.cumsum([len(e[0]) for e in exs])]))
    inputs = packed_inputs(ids, cu, [p for e in exs for p in e[1]], np.concatenate([e[2] for e in exs]), proc.meta, 262)
    inputs["position_ids"] = inputs["position_ids"][:, None, :]  # [4, 1, T]: one row
    logits = packed_model(input_ids=ids, mm_token_type_ids=(ids == 262).long(), use_cache=False, **inputs).logits
    packed_total = 0.0
    for k, (e_ids, _, _) in enumerate(exs):
        a, b = int(cu[k]), int(cu[k + 1])
        assert (logits[:, a:b].detach() - alone_logits[k]).abs().max() < 1e-5, f"example {k}"
        packed_total = packed_total + _losses(logits[:, a:b], ids[:, a:b]).sum()
    assert abs(float(packed_total) - float(total)) <= 1e-5 * abs(float(total))
    packed_total.backward()
    vision = 0
    for (name, p), q in zip(alone_model.named_parameters(), packed_model.parameters()):
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
            continue
        scale = float(p.grad.abs().max()) or 1.0
        assert float((p.grad - q.grad).abs().max()) <= 1e-4 * scale, name
        vision += "visual" in name
    assert vision > 0, "the vision tower's gradients were compared"

    # Negative controls: the same row with 1-D positions is refused, and mRoPE computed over the whole row
    # (the text row as every axis) is measurably wrong.
    with pytest.raises(ConfigError, match="images and no multi-axis position_ids"):
        packed_model(input_ids=ids, pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                     position_ids=inputs["position_ids"][0], use_cache=False)
    flat = inputs["position_ids"][:1].expand(4, -1, -1)
    with torch.no_grad():
        wrong = packed_model(input_ids=ids, use_cache=False, **{**inputs, "position_ids": flat}).logits
    assert (wrong - logits.detach()).abs().max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llava", "qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_the_model_matrix_verifies_the_image_text_families_with_images(kind, monkeypatch):
    """What `make models` runs for the image-text families: verify_images on a tiny config, equal; the families
    table lists them as verified, so use_packer_attention takes them without allow_unverified. With the text row
    given as every mRoPE row (1-D positions), the same check is not equal (for the mRoPE families)."""
    import packer.core.vision as V
    from packer.train.hf.families import FAMILIES as MATRIX
    from packer.train.hf.verify import VISION_FAMILIES, tiny_vision_config, verify_images

    assert kind in VISION_FAMILIES
    cfg = tiny_vision_config(kind)

    def make(attn):
        torch.manual_seed(0)
        return transformers.AutoModelForImageTextToText.from_config(cfg, attn_implementation=attn).float()

    v = verify_images(make)
    assert v.equal and v.attention_calls > 0, f"{kind}: {v}"
    assert MATRIX.get(kind, {}).get("status") == "verified"
    if kind != "llava":
        real = V.packed_positions
        monkeypatch.setattr(V, "packed_positions", lambda *a: np.repeat(real(*a)[:1], 4, axis=0))
        assert not verify_images(make).equal
