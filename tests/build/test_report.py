"""Reports are computed from the shards: check their numbers against the shard files directly."""

from __future__ import annotations


import numpy as np
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from packer.core import config as C
from packer.core.formats import shards as fmt
from packer.build.planners.bounds import lower_bound
from packer.cli import main
from packer.pipeline import pack
from packer.build.report import compare_table, load

from conftest import sft_records, write_jsonl


def test_report_numbers_match_the_shards(tmp_path, byte_tok):
    a = write_jsonl(tmp_path / "a.jsonl", sft_records(120, seed=1, long_every=25))
    b = write_jsonl(tmp_path / "b.jsonl", sft_records(60, seed=2) + [{"query": "q"}])
    report = pack([str(a), str(b)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=384),
                  tokenize_config=C.TokenizeConfig(skip_bad=True), baseline_batch=4)
    shards = [fmt.open_shard(p) for p in sorted((tmp_path / "r" / "shards").glob("shard-*.bin"))]
    seg = np.concatenate([s.segment_lengths for s in shards]).astype(np.int64)
    ex = np.concatenate([s.segment_example for s in shards])
    packs = sum(s.num_packs for s in shards)
    assert report["num_packs"] == packs and report["num_tokens"] == seg.sum()
    assert report["num_loss_tokens"] == sum(int(s.loss_mask.sum()) for s in shards)
    assert report["efficiency"] == seg.sum() / (packs * 384)
    l1 = -(-int(seg.sum()) // 384)
    big = seg[seg > 384 // 2]  # Martello-Toth L2 at threshold 0 on these lengths: items over half never share
    assert report["lower_bound_packs"] == lower_bound(seg, 384) and l1 <= report["lower_bound_packs"] <= packs
    assert report["lower_bound_packs"] >= len(big)
    assert report["max_segments_per_pack"] == max(int(np.diff(s.pack_segment_offsets).max()) for s in shards)
    assert report["skipped_records"] == 1 and report["records"] == 181
    # baselines recomputed here from the segment lengths in data order
    in_order = seg[np.argsort(ex, kind="stable")]
    longest = sum(max(in_order[i:i + 4]) * len(in_order[i:i + 4]) for i in range(0, len(in_order), 4))
    assert np.isclose(report["waste_pad_to_longest"], 1 - seg.sum() / longest)
    assert np.isclose(report["speedup_tokens_vs_pad_to_pack"], len(seg) * 384 / (packs * 384))
    assert np.isclose(report["speedup_attention_vs_pad_to_longest"],
                      sum(max(in_order[i:i + 4]) ** 2 * len(in_order[i:i + 4]) for i in range(0, len(in_order), 4))
                      / float((seg.astype(float) ** 2).sum()))
    # per file: the tokens each file lost to the over-long policy add up to the run's
    fa, fb = report["per_file"]
    assert fa["examples"] + fb["examples"] == report["num_examples"] == 180
    assert fa["lost_tokens"] + fb["lost_tokens"] == report["truncated_tokens"] + report["dropped_tokens"]
    assert fa["lost_tokens"] > fb["lost_tokens"], "file a has the long responses"
    assert fb["skipped"] == 1
    assert sum(report["histograms"]["pack_fill_percent"]) == packs
    for name in ("report.json", "report.md", "report.html"):
        assert (tmp_path / "r" / name).is_file()
    html = (tmp_path / "r" / "report.html").read_text()
    assert html.count("<svg ") == 4


def test_report_and_compare_commands(tmp_path, byte_tok):
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(80))
    runner = CliRunner()
    for algo in ("nextfit", "bfd"):
        r = runner.invoke(main, ["pack", str(data), "--out", str(tmp_path / algo), "--pack-len", "512",
                                 "--algorithm", algo, "--quiet"])
        assert r.exit_code == 0, r.output
    before = load(tmp_path / "bfd")
    (tmp_path / "bfd" / "report.json").unlink()
    assert runner.invoke(main, ["report", str(tmp_path / "bfd")]).exit_code == 0
    after = load(tmp_path / "bfd")
    # how the run ran (its wall times, the tokenizer backend) is not in the shards: only what they hold is
    assert {k: v for k, v in after.items() if k not in ("seconds", "plan_seconds", "tokenizer")} == \
        {k: v for k, v in before.items() if k not in ("seconds", "plan_seconds", "tokenizer")}
    r = runner.invoke(main, ["compare", str(tmp_path / "nextfit"), str(tmp_path / "bfd"), "--format", "markdown"])
    assert r.exit_code == 0
    assert "| metric | nextfit | bfd |" in r.output and "| packs |" in r.output
    text = compare_table([("a", before), ("b", before)])
    assert "gap to bound" in text
    r = runner.invoke(main, ["compare", str(tmp_path / "nope")])
    assert r.exit_code == 2  # click: path does not exist


def test_a_mixture_report_counts_losses_samples_and_repeats_apart(tmp_path, byte_tok):
    """Before: with gsm8k/train.jsonl#weight=2 and math/train.jsonl#weight=0.5, 'tokens lost' per input was
    input minus trained tokens (-1,356,426 and 1,260,763: repeats counted as negative loss, the sampled-out
    half as lost) while only 5,136 tokens were truncated, and both bars were labelled train.jsonl."""
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "math").mkdir()
    a = write_jsonl(tmp_path / "gsm8k" / "train.jsonl", sft_records(100, seed=1, long_every=20))
    b = write_jsonl(tmp_path / "math" / "train.jsonl", sft_records(80, seed=2, long_every=10))
    report = pack([f"{a}#weight=2", f"{b}#weight=0.5"], tmp_path / "r", tokenizer=byte_tok,
                  plan_config=C.PlanConfig(pack_len=512, algorithm="bfd"))
    fa, fb = report["per_file"]
    assert (fa["label"], fb["label"]) == ("gsm8k/train.jsonl", "math/train.jsonl")
    assert fa["lost_tokens"] >= 0 and fb["lost_tokens"] >= 0
    assert fa["lost_tokens"] + fb["lost_tokens"] == report["truncated_tokens"] + report["dropped_tokens"] > 0
    assert (fa["repeated_examples"], fa["sampled_out_examples"]) == (100, 0)
    assert (fb["repeated_examples"], fb["sampled_out_examples"]) == (0, 40)
    assert fb["sampled_out_tokens"] > 0 and fa["repeated_tokens"] > 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| tokens lost (over-long) |" in md and "| sampled out |" in md


def test_the_reports_bound_respects_max_segments(tmp_path, byte_tok):
    """Before: --max-segments 2 left the report's lower bound at the token bound (a 168% 'gap')."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"query": "q", "response": str(i)} for i in range(60)])
    report = pack([str(data)], tmp_path / "r", tokenizer=byte_tok,
                  plan_config=C.PlanConfig(pack_len=1024, max_segments=2, algorithm="bfd"))
    assert report["lower_bound_packs"] == 30 == report["num_packs"] and report["gap_to_bound"] == 0


def test_report_size_does_not_grow_with_the_pack_length(tmp_path, byte_tok):
    """Before: rendering took 80 s for 5 records at pack length 131,072 (a bar per possible length)."""
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(5, seed=1))
    report = pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=131_072))
    h = report["histograms"]
    assert len(h["example_length"]) <= 257 and h["example_length_bin"] == 513
    assert sum(h["example_length"]) == report["num_segments"]
    assert (tmp_path / "r" / "report.json").stat().st_size < 20_000


def test_an_empty_or_damaged_report_is_an_error_or_rewritten(tmp_path, byte_tok):
    """Before: a 0-byte report.json gave a JSONDecodeError traceback in `packer report` and `compare`."""
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(20))
    pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=512))
    (tmp_path / "r" / "report.json").write_bytes(b"")
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "r"), str(tmp_path / "r")])
    assert r.exit_code == 1 and "report.json: unreadable report" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["report", str(tmp_path / "r")])
    assert r.exit_code == 0 and load(tmp_path / "r")["num_packs"] > 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=300), st.sampled_from([1, 8, 64]),
       st.one_of(st.none(), st.integers(1, 5000)))
def test_bar_charts_draw_every_bar_to_scale(heights, bin_width, pack_len):
    """Each chart is well-formed SVG with one bar per bin, every bar's height proportional to its value (its
    tooltip the exact value), bars left to right in order, and the pack length drawn where asked."""
    import xml.etree.ElementTree as ET

    from packer.build.plots import _bar

    _, svg = _bar("t", np.arange(len(heights)) * bin_width, heights, "x", "y", width=bin_width, pack_len=pack_len)
    ns = {"s": "http://www.w3.org/2000/svg"}
    root = ET.fromstring(svg)
    bars = root.findall("s:rect[@class='bar']", ns)
    assert len(bars) == len(heights)
    tall = [float(b.get("height")) for b in bars]
    top = max(heights)
    if top:
        scale = max(tall) / top
        assert np.allclose(tall, np.asarray(heights) * scale, atol=0.02)
    lefts = [float(b.get("x")) for b in bars]
    assert lefts == sorted(lefts)
    assert [b.find("s:title", ns).text.split(": ")[-1].replace(",", "") for b in bars] == [str(h) for h in heights]
    assert (root.find("s:line[@class='pack-len']", ns) is not None) == (pack_len is not None)
