"""The shard format: a golden file, a plain-numpy reader, and clear errors on damaged files."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.core import config as C
from packer.core.formats import shards as fmt
from packer.train.reader import PackedShards
from packer.core.errors import FormatError

ARRAYS = dict(
    tokens=np.array([5, 6, 7, 8, 9], np.uint16), loss_mask=np.array([0, 1, 1, 0, 1], np.uint8),
    pack_token_offsets=np.array([0, 3, 5]), pack_segment_offsets=np.array([0, 2, 3]),
    segment_lengths=np.array([2, 1, 2]), segment_example=np.array([10, 11, 12]),
    segment_start=np.array([0, 0, 0]), segment_role=np.array([1, 2, 0], np.uint8),
)
# sha256 of the golden shard below; changing it means changing docs/FORMAT.md and VERSION too.
GOLDEN = "b3955df8acf205d3847e06d8a636d51ea076fe539fa00a79ce1fcdc6b8fd5ea0"


def write_golden(path):
    return fmt.write_shard(path, pack_len=4, code=1, **ARRAYS)


def test_golden_shard_bytes(tmp_path):
    size = write_golden(tmp_path / "s.bin")
    data = (tmp_path / "s.bin").read_bytes()
    assert size == len(data) == 64 + 64 * 10 + 5
    assert data[:8] == b"PKSHARD\0"
    assert struct.unpack_from("<IIQQQQ", data, 8) == (3, 1, 2, 3, 5, 4)
    assert hashlib.sha256(data).hexdigest() == GOLDEN
    # the head (everything before the tokens) is what a streaming reader fetches first and checks whole
    assert fmt.head_size(1, 2, 3, 5) == 64 * 10
    assert fmt.head_sha256(tmp_path / "s.bin") == hashlib.sha256(data[:640]).hexdigest()


def test_pack_labels_and_checksums_are_what_format_md_defines(tmp_path):
    """pack_labels: mask ones less segments starting on a mask one; checksums: xxh3-64 of each pack's bytes."""
    import xxhash

    write_golden(tmp_path / "s.bin")
    sh = fmt.open_shard(tmp_path / "s.bin")
    assert sh.pack_labels.tolist() == [1, 1]
    tok, msk = ARRAYS["tokens"], ARRAYS["loss_mask"]
    assert sh.pack_tokens_xxh3.tolist() == [xxhash.xxh3_64_intdigest(tok[:3].tobytes()),
                                            xxhash.xxh3_64_intdigest(tok[3:].tobytes())]
    assert sh.pack_mask_xxh3.tolist() == [xxhash.xxh3_64_intdigest(msk[:3].tobytes()),
                                          xxhash.xxh3_64_intdigest(msk[3:].tobytes())]
    fmt.check_pack_sums(sh, np.arange(2))


def test_older_shard_versions_get_the_rerun_error(tmp_path):
    write_golden(tmp_path / "s.bin")
    raw = bytearray((tmp_path / "s.bin").read_bytes())
    struct.pack_into("<I", raw, 8, 2)
    (tmp_path / "s.bin").write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=r"shard format version 2.*re-run `packer pack`"):
        fmt.open_shard(tmp_path / "s.bin")


def test_plain_numpy_reader_per_format_md(tmp_path):
    """What docs/FORMAT.md promises: the arrays at 64-byte aligned offsets, read with numpy alone."""
    write_golden(tmp_path / "s.bin")
    mm = np.memmap(tmp_path / "s.bin", dtype=np.uint8, mode="r")
    P, S, T = 2, 3, 5
    pos = 64
    out = {}
    for name, dt, n in [("pack_token_offsets", "<i8", P + 1), ("pack_segment_offsets", "<i8", P + 1),
                        ("segment_lengths", "<i4", S), ("segment_example", "<i8", S), ("segment_start", "<i4", S),
                        ("segment_role", "u1", S), ("pack_labels", "<i8", P), ("pack_tokens_xxh3", "<u8", P),
                        ("pack_mask_xxh3", "<u8", P), ("tokens", "<u2", T), ("loss_mask", "u1", T)]:
        pos = (pos + 63) // 64 * 64
        out[name] = np.frombuffer(mm, dtype=dt, count=n, offset=pos)
        pos += n * np.dtype(dt).itemsize
    for name, want in ARRAYS.items():
        assert out[name].tolist() == want.tolist(), name


def test_damaged_shards_raise_naming_the_file(tmp_path):
    path = tmp_path / "s.bin"
    write_golden(path)
    good = path.read_bytes()
    path.write_bytes(good[:-3])
    with pytest.raises(FormatError, match=r"s\.bin: truncated or padded: \d+ bytes, header implies"):
        fmt.open_shard(path)
    path.write_bytes(b"NOTSHARD" + good[8:])
    with pytest.raises(FormatError, match="not a packer shard"):
        fmt.open_shard(path)
    path.write_bytes(good[:8] + struct.pack("<I", 99) + good[12:])
    with pytest.raises(FormatError, match="format version 99; this packer reads version 3.*upgrade packer"):
        fmt.open_shard(path)
    path.write_bytes(good[:10])
    with pytest.raises(FormatError, match="shorter than the 64-byte header"):
        fmt.open_shard(path)


def test_checksum_mismatch_found_by_verify(tmp_path, byte_tok):
    from packer.core import config as C
    from packer.pipeline import pack

    from conftest import sft_records, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(30))
    pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=256))
    PackedShards(tmp_path / "r", verify=True)
    shard = next((tmp_path / "r" / "shards").glob("shard-*.bin"))
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x01  # a loss-mask byte: still 0 or 1
    shard.write_bytes(bytes(raw))
    PackedShards(tmp_path / "r", verify=False)  # size, header and offsets still fine
    with pytest.raises(FormatError, match=r"shard-00000\.bin: checksum differs"):
        PackedShards(tmp_path / "r", verify=True)
    (tmp_path / "r" / "shards" / "manifest.json").unlink()
    with pytest.raises(FormatError, match="no manifest.json"):
        PackedShards(tmp_path / "r")


def test_manifest_seal_golden_and_old_versions_refused(tmp_path):
    """The seal is sha256 over the canonical JSON without its own key (docs/FORMAT.md); a manifest of
    version 1 (no seal) or an edited one gives the one-line error saying what to re-run."""

    from packer.core.manifest import SEAL, read_manifest, seal

    body = {"format": "packer-shards", "version": 2, "digest": "d", "counts": {"packs": 1}}
    assert seal(body) == hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert seal(body) == "109e848c75594f7bf6bbbcbcb1e24249db2a515fa1a1e7782df29f5e09e46724"
    (tmp_path / "manifest.json").write_text(json.dumps({**body, SEAL: seal(body)}))
    assert read_manifest(tmp_path, "packer-shards", 2, "hint")["counts"] == {"packs": 1}
    (tmp_path / "manifest.json").write_text(json.dumps({**body, "counts": {"packs": 2}, SEAL: seal(body)}))
    with pytest.raises(FormatError, match="edited or damaged: its manifest_sha256 does not match"):
        read_manifest(tmp_path, "packer-shards", 2, "hint")
    (tmp_path / "manifest.json").write_text(json.dumps({**body, "version": 1}))
    with pytest.raises(FormatError, match="version 1 is not the supported 2.*re-run"):
        read_manifest(tmp_path, "packer-shards", 2, "hint")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 9)), min_size=1, max_size=60),
       st.integers(100, 20000), st.sampled_from([1, 2]))
def test_shards_stay_under_shard_bytes_unless_one_pack_alone_exceeds_it(packs, limit, code):
    """The writer's split (pack_bytes + SHARD_OVERHEAD) against the exact size of the file it implies."""
    from packer.build.write import _split_shards

    tokens = np.array([t for t, _ in packs], np.int64)
    segments = np.array([min(s, t) for t, s in packs], np.int64)
    bounds = _split_shards(fmt.pack_bytes(code, tokens, segments), limit - fmt.SHARD_OVERHEAD)
    assert bounds[0] == 0 and bounds[-1] == len(packs) and np.all(np.diff(bounds) >= 1)
    for a, b in zip(bounds[:-1], bounds[1:]):
        size = fmt.file_size(code, b - a, int(segments[a:b].sum()), int(tokens[a:b].sum()))
        assert size <= limit or b - a == 1, (a, b, size, limit)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 9)), max_size=30), st.sampled_from([1, 2]))
def test_pack_bytes_and_overhead_are_exact(packs, code):
    """pack_bytes counts each array's entries at their dtype (read from the layout, not restated), and a
    file is never more than SHARD_OVERHEAD beyond its packs' bytes."""
    dtypes = {name: dt.itemsize for name, dt, _, _ in fmt._layout(code, 0, 0, 0)}
    per_token = dtypes["tokens"] + dtypes["loss_mask"]
    per_segment = dtypes["segment_lengths"] + dtypes["segment_example"] + dtypes["segment_start"] + dtypes["segment_role"]
    per_pack = dtypes["pack_token_offsets"] + dtypes["pack_segment_offsets"] + dtypes["pack_labels"] + \
        dtypes["pack_tokens_xxh3"] + dtypes["pack_mask_xxh3"]
    tokens = np.array([t for t, _ in packs], np.int64)
    segments = np.array([s for _, s in packs], np.int64)
    got = fmt.pack_bytes(code, tokens, segments)
    assert got.tolist() == (tokens * per_token + segments * per_segment + per_pack).tolist()
    size = fmt.file_size(code, len(packs), int(segments.sum()), int(tokens.sum()))
    assert size - fmt.SHARD_OVERHEAD <= int(got.sum()) <= size


def test_check_values_bounds_and_messages():
    """Ids up to vocab_size - 1 and mask bytes 0/1 pass; anything else names the pack (or the shard)."""
    from packer.core.formats.shards import check_values

    check_values(np.array([0, 8], np.uint16), np.array([0, 1], np.uint8), 9, "f.bin", 0)
    check_values(np.zeros(0, np.uint16), np.zeros(0, np.uint8), 1, "f.bin", 0)
    with pytest.raises(FormatError, match=r"f\.bin: pack 0 holds token id 9, not below the vocabulary size 9"):
        check_values(np.array([1, 9], np.uint16), np.zeros(2, np.uint8), 9, "f.bin", 0)
    with pytest.raises(FormatError, match="the shard holds token id 70000"):
        check_values(np.array([70000], np.uint32), np.zeros(1, np.uint8), 65536, "f.bin", -1)
    with pytest.raises(FormatError, match="pack 3 has loss_mask byte 2, not 0 or 1"):
        check_values(np.array([1, 2], np.uint16), np.array([0, 2], np.uint8), 9, "f.bin", 3)


def _shard(**change) -> "fmt.Shard":
    """A valid in-memory shard (packs [3, 2] tokens of pack_len 3; segments [2, 1 | 2]), fields replaced."""
    f = dict(path="s.bin", pack_len=3, tokens=np.array([5, 6, 7, 8, 9], np.uint16), loss_mask=np.ones(5, np.uint8),
             pack_token_offsets=np.array([0, 3, 5]), pack_segment_offsets=np.array([0, 2, 3]),
             segment_lengths=np.array([2, 1, 2], np.int32), segment_example=np.array([0, 1, 2]),
             segment_start=np.array([0, 0, 0], np.int32), segment_role=np.array([1, 2, 0], np.uint8),
             pack_labels=np.array([1, 1]), pack_tokens_xxh3=np.zeros(2, np.uint64), pack_mask_xxh3=np.zeros(2, np.uint64))
    f.update({k: np.asarray(v) if isinstance(v, list) else v for k, v in change.items()})
    return fmt.Shard(**f)


@pytest.mark.parametrize("change,match", [
    (dict(pack_len=2), "pack 0 has 3 tokens, more than pack_len 2"),
    (dict(pack_token_offsets=[1, 3, 5]), "pack_token_offsets runs from 1 to 5, not 0 to 5"),
    (dict(pack_token_offsets=[0, 3, 4]), "pack_token_offsets runs from 0 to 4, not 0 to 5"),
    (dict(pack_token_offsets=[0, 0, 5], pack_len=5), "pack_token_offsets of pack 0: 0 to 0"),
    (dict(pack_token_offsets=[0, 6, 5], pack_len=6), "pack_token_offsets of pack 1: 6 to 5"),
    (dict(pack_segment_offsets=[0, 3, 3]), "pack_segment_offsets of pack 1: 3 to 3"),
    (dict(pack_segment_offsets=[1, 2, 3]), "pack_segment_offsets runs from 1 to 3"),
    (dict(segment_lengths=[3, 0, 2]), r"segment_lengths\[1\] \(pack 0\) is 0"),
    (dict(segment_lengths=[2, 1, -2]), r"segment_lengths\[2\] \(pack 1\) is -2"),
    (dict(segment_lengths=[1, 1, 3]), "pack 0: segment_lengths sum to 2, pack_token_offsets give 3"),
    (dict(segment_lengths=[2, 1, 1]), "pack 1: segment_lengths sum to 1, pack_token_offsets give 2"),
    (dict(pack_labels=[1, 3]), "pack_labels of pack 1 is 3, not between 0 and its 2 tokens"),
    (dict(pack_labels=[-1, 0]), "pack_labels of pack 0 is -1"),
    (dict(segment_example=[0, -1, 2]), r"segment_example\[1\] is -1, a negative record position"),
    (dict(segment_start=[0, 0, -5]), r"segment_start\[2\] is -5, a negative record position"),
    (dict(segment_role=np.array([1, 7, 0], np.uint8)), r"segment_role\[1\] is 7, not a role \(0-6\)"),
])
def test_check_shard_refuses_each_broken_field(change, match):
    fmt.check_shard(_shard())  # the valid shard passes, with packs of exactly pack_len tokens
    fmt.check_shard(_shard(), 3)
    with pytest.raises(FormatError, match=r"s\.bin: " + match):
        fmt.check_shard(_shard(**change))


def test_check_shard_compares_the_header_with_the_manifest():
    with pytest.raises(FormatError, match="header pack_len 3 differs from the manifest's 4"):
        fmt.check_shard(_shard(), 4)


def test_token_dtype_switches_above_65536_ids():
    """uint16 holds ids 0..65535, so a vocabulary of up to 65,536 ids (GPT-2: 50,257) uses it; one more
    id (Llama 3: 128,256) needs uint32."""
    assert [fmt.token_dtype_code(v) for v in (1, 50257, 65535, 65536, 65537, 128256)] == [1, 1, 1, 1, 2, 2]
    assert fmt.TOKEN_DTYPES[1] == np.dtype("<u2") and fmt.TOKEN_DTYPES[2] == np.dtype("<u4")


def test_open_shard_maps_read_only_and_names_its_file(tmp_path):
    """Blocks given as iterables are written back to back (the writer streams them); the map is
    read-only, so no reader can change a shard in place."""
    path = tmp_path / "s.bin"
    fmt.write_shard(path, pack_len=8, code=1, tokens=iter([np.array([1, 2], np.uint16), np.array([3], np.uint16)]),
                    loss_mask=iter([np.array([0, 1], np.uint8), np.array([1], np.uint8)]), num_tokens=3,
                    pack_token_offsets=np.array([0, 3]), pack_segment_offsets=np.array([0, 1]),
                    segment_lengths=np.array([3]), segment_example=np.array([0]), segment_start=np.array([0]))
    shard = fmt.open_shard(path)
    assert shard.path == str(path) and shard.tokens.tolist() == [1, 2, 3] and shard.loss_mask.tolist() == [0, 1, 1]
    assert not shard.tokens.flags.writeable and not shard.pack_token_offsets.flags.writeable
    with pytest.raises(ValueError, match="tokens: 2 entries, expected 3"):
        fmt.write_shard(tmp_path / "t.bin", pack_len=8, code=1, tokens=iter([np.array([1, 2], np.uint16)]),
                        loss_mask=np.zeros(3, np.uint8), num_tokens=3, pack_token_offsets=np.array([0, 3]),
                        pack_segment_offsets=np.array([0, 1]), segment_lengths=np.array([3]),
                        segment_example=np.array([0]), segment_start=np.array([0]))


def test_version_3_manifests_carry_sources_and_identities_and_version_2_is_refused(tmp_path):
    """Issue 14 changed manifest keys (sources; inputs' size, identity, source, loss_tokens): one
    bump, version 3 for every stage, and a version-2 run gives the one-line re-run error."""

    from conftest import sft_records, write_jsonl
    from packer.core.manifest import SEAL, seal
    from packer.pipeline import pack

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(20))
    pack([f"{data}#weight=2"], tmp_path / "r", plan_config=C.PlanConfig(pack_len=256))
    tok, plan, shards = (json.loads((tmp_path / "r" / s / "manifest.json").read_text())
                         for s in ("tokenized", "plan", "shards"))
    assert (tok["version"], plan["version"], shards["version"]) == (6, 6, 7)  # 3 until issue 26, tokenized 5 since preference roles
    source = {"path": str(data), "query_field": None, "response_field": None, "messages_field": None,
              "text_field": None, "tools_field": None, "chat_format": None, "files": [0]}
    assert tok["sources"] == [source] and shards["sources"] == [{**source, "weight": 2.0}]
    assert set(shards["inputs"][0]) == {"path", "size", "sha256", "source", "records", "examples", "tokens",
                                        "loss_tokens", "skipped"}
    assert plan["config"]["weights"] == [2.0] and plan["counts"]["examples_mixed"] == 40
    old = {k: v for k, v in shards.items() if k != SEAL}
    old["version"] = 2
    (tmp_path / "r" / "shards" / "manifest.json").write_text(json.dumps({**old, SEAL: seal(old)}))
    with pytest.raises(FormatError, match="version 2 is not the supported [4-7].*re-run"):
        PackedShards(tmp_path / "r")


def test_version_4_manifests_carry_render_limits_and_per_file_counts_and_version_3_is_refused(tmp_path):
    """Issue 26 changed manifest keys (the tokenize config's max_render_chars and render_budget; the plan's
    counts.per_file, copied into the shards manifest): one bump, version 4 for every stage, and a version-3
    run of any stage gives the one-line re-run error."""

    from conftest import sft_records, write_jsonl
    from packer.core.formats.plan import read_plan
    from packer.core.formats.tokenized import open_tokenized
    from packer.core.manifest import SEAL, seal
    from packer.pipeline import pack

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(20))
    pack([f"{data}#weight=2"], tmp_path / "r", plan_config=C.PlanConfig(pack_len=256))
    tok, plan, shards = (json.loads((tmp_path / "r" / s / "manifest.json").read_text())
                         for s in ("tokenized", "plan", "shards"))
    assert (tok["version"], plan["version"], shards["version"]) == (6, 6, 7)
    assert tok["config"]["max_render_chars"] == 1 << 24 and tok["config"]["render_budget"] == 20_000_000
    (per_file,) = plan["counts"]["per_file"]
    assert shards["counts"]["per_file"] == [per_file] and sorted(per_file) == sorted([
        "lost_tokens", "truncated_examples", "dropped_examples", "sampled_out_examples", "sampled_out_tokens",
        "repeated_examples", "repeated_tokens"])
    c = plan["counts"]
    assert per_file["repeated_examples"] == 20 and per_file["sampled_out_examples"] == 0
    assert per_file["lost_tokens"] == c["truncated_tokens"] + c["dropped_tokens"]
    assert per_file["truncated_examples"] + per_file["dropped_examples"] == c["truncated_examples"] + c["dropped_examples"]
    for stage, read in (("tokenized", open_tokenized), ("plan", read_plan), ("shards", PackedShards)):
        path = tmp_path / "r" / stage / "manifest.json"
        m = json.loads(path.read_text())
        old = {k: v for k, v in m.items() if k != SEAL}
        old["version"] = 3
        path.write_text(json.dumps({**old, SEAL: seal(old)}))
        with pytest.raises(FormatError, match="version 3 is not the supported [4-7].*re-run"):
            read(tmp_path / "r" / stage)
        path.write_text(json.dumps(m))


def test_version_5_shards_manifests_carry_head_digests_and_version_4_is_refused(tmp_path):
    """Issue 30 changed the shard bytes (the head first, per-pack labels and checksums: shard version 3) and
    the shards manifest (shards[*].head_sha256: folder version 5); a version-4 folder gives the re-run error."""

    from conftest import sft_records, write_jsonl
    from packer.core.manifest import SEAL, seal
    from packer.pipeline import pack

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(20))
    pack([str(data)], tmp_path / "r", plan_config=C.PlanConfig(pack_len=256))
    path = tmp_path / "r" / "shards" / "manifest.json"
    m = json.loads(path.read_text())
    assert m["version"] == 7 and m["shard_format_version"] == 3
    for e in m["shards"]:
        assert e["head_sha256"] == fmt.head_sha256(tmp_path / "r" / "shards" / e["file"])
    old = {k: v for k, v in m.items() if k != SEAL}
    old["version"] = 4
    path.write_text(json.dumps({**old, SEAL: seal(old)}))
    with pytest.raises(FormatError, match="version 4 is not the supported 7.*re-run"):
        PackedShards(tmp_path / "r")
    old = {k: v for k, v in m.items() if k != SEAL}
    del old["shards"][0]["head_sha256"]
    path.write_text(json.dumps({**old, SEAL: seal(old)}))
    with pytest.raises(FormatError, match=r"shards\[0\] has no head_sha256"):
        PackedShards(tmp_path / "r")


def _older_versions_refused(run, manifests: dict, cases) -> None:
    """For each (stage, reader, old, now): the stage's manifest resealed as version `old` is refused with the
    one-line re-run error naming `now`; then put back."""
    import json

    from packer.core.manifest import SEAL, seal

    for stage, read, old, now in cases:
        path = run / stage / "manifest.json"
        body = {k: v for k, v in manifests[stage].items() if k != SEAL}
        body["version"] = old
        path.write_text(json.dumps({**body, SEAL: seal(body)}))
        with pytest.raises(FormatError, match=f"version {old} is not the supported {now}.*re-run"):
            read(run / stage)
        path.write_text(json.dumps(manifests[stage]))


def test_version_6_manifests_carry_the_processor_and_max_patches_and_version_5_is_refused(tmp_path):
    """Issue 31 added config keys (tokenize: processor; plan: max_patches) and runs with images (tokenized columns,
    the shards manifest's images and images-NNNNN.bin): tokenized 6, plan 5, shards folder 6; older are refused."""
    import json

    from conftest import sft_records, write_jsonl
    from packer.core.formats.plan import read_plan
    from packer.core.formats.tokenized import open_tokenized
    from packer.pipeline import pack

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(20))
    pack([str(data)], tmp_path / "r", plan_config=C.PlanConfig(pack_len=256))
    ms = {s: json.loads((tmp_path / "r" / s / "manifest.json").read_text()) for s in ("tokenized", "plan", "shards")}
    assert ms["tokenized"]["config"]["processor"] is None and ms["plan"]["config"]["max_patches"] is None
    assert "images" not in ms["shards"]
    _older_versions_refused(tmp_path / "r", ms, (("tokenized", open_tokenized, 5, 6), ("plan", read_plan, 4, 6),
                                                 ("shards", PackedShards, 5, 7)))


def test_version_7_has_heads_bin_and_the_even_keys_and_version_6_is_refused(tmp_path):
    """Issue 30 (second change): the shards folder's heads.bin (every shard's head end to end, what a streaming
    reader fetches in one request) and the plan config's even keys: plan 6, shards folder 7; older are refused, and
    a heads.bin that is missing or of the wrong size is named."""
    import json

    from conftest import sft_records, write_jsonl
    from packer.core.formats.plan import read_plan
    from packer.core.manifest import SEAL, seal
    from packer.pipeline import pack

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(60))
    pack([str(data)], tmp_path / "r", plan_config=C.PlanConfig(pack_len=256, even="tokens"),
         write_config=C.WriteConfig(shard_bytes=8 << 10))
    shards = tmp_path / "r" / "shards"
    ms = {s: json.loads((tmp_path / "r" / s / "manifest.json").read_text()) for s in ("plan", "shards")}
    names = [e["file"] for e in ms["shards"]["shards"]]
    assert len(names) >= 3
    assert (shards / "heads.bin").read_bytes() == fmt.heads_of([shards / n for n in names])
    assert ms["shards"]["files"]["heads.bin"]["bytes"] == (shards / "heads.bin").stat().st_size
    assert ms["plan"]["config"]["even"] == "tokens" and ms["plan"]["config"]["even_attention"] == []
    assert ms["shards"]["plan"]["even"]["by"] == "tokens"
    _older_versions_refused(tmp_path / "r", ms, (("plan", read_plan, 5, 6), ("shards", PackedShards, 6, 7)))
    PackedShards(tmp_path / "r")
    heads = (shards / "heads.bin").read_bytes()
    # a heads.bin sealed into the manifest but not the shards' heads: packer verify compares them
    bad = bytearray(heads)
    bad[70] ^= 0x01
    (shards / "heads.bin").write_bytes(bytes(bad))
    body = {k: v for k, v in ms["shards"].items() if k != SEAL}
    body["files"] = dict(body["files"], **{"heads.bin": {"bytes": len(bad), "sha256": hashlib.sha256(bad).hexdigest()}})
    (shards / "manifest.json").write_text(json.dumps({**body, SEAL: seal(body)}))
    with pytest.raises(FormatError, match=r"heads\.bin: differs from the shards' heads"):
        fmt.verify(tmp_path / "r")
    (shards / "heads.bin").write_bytes(heads)
    (shards / "manifest.json").write_text(json.dumps(ms["shards"]))
    fmt.verify(tmp_path / "r")
    (shards / "heads.bin").write_bytes(heads[:-1])
    with pytest.raises(FormatError, match=r"heads\.bin: truncated or grown"):
        PackedShards(tmp_path / "r")
    (shards / "heads.bin").unlink()
    with pytest.raises(FormatError, match=r"heads\.bin: missing"):
        PackedShards(tmp_path / "r")
