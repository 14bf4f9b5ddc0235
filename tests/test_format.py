"""The shard format: a golden file, a plain-numpy reader, and clear errors on damaged files."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer import config as C
from packer import format as fmt
from packer.dataset import PackedShards
from packer.errors import FormatError

ARRAYS = dict(
    tokens=np.array([5, 6, 7, 8, 9], np.uint16), loss_mask=np.array([0, 1, 1, 0, 1], np.uint8),
    pack_token_offsets=np.array([0, 3, 5]), pack_segment_offsets=np.array([0, 2, 3]),
    segment_lengths=np.array([2, 1, 2]), segment_example=np.array([10, 11, 12]),
    segment_start=np.array([0, 0, 0]),
)
# sha256 of the golden shard below; changing it means changing docs/FORMAT.md and VERSION too.
GOLDEN = "fa5358c635454d85d5d76d863b4c0c6617063abd6634699a91cc5161caefd6d7"


def write_golden(path):
    return fmt.write_shard(path, pack_len=4, code=1, **ARRAYS)


def test_golden_shard_bytes(tmp_path):
    size = write_golden(tmp_path / "s.bin")
    data = (tmp_path / "s.bin").read_bytes()
    assert size == len(data) == 64 + 64 * 6 + 3 * 4
    assert data[:8] == b"PKSHARD\0"
    assert struct.unpack_from("<IIQQQQ", data, 8) == (1, 1, 2, 3, 5, 4)
    assert hashlib.sha256(data).hexdigest() == GOLDEN


def test_plain_numpy_reader_per_format_md(tmp_path):
    """What docs/FORMAT.md promises: the arrays at 64-byte aligned offsets, read with numpy alone."""
    write_golden(tmp_path / "s.bin")
    mm = np.memmap(tmp_path / "s.bin", dtype=np.uint8, mode="r")
    P, S, T = 2, 3, 5
    pos = 64
    out = {}
    for name, dt, n in [("tokens", "<u2", T), ("loss_mask", "u1", T), ("pack_token_offsets", "<i8", P + 1),
                        ("pack_segment_offsets", "<i8", P + 1), ("segment_lengths", "<i4", S),
                        ("segment_example", "<i8", S), ("segment_start", "<i4", S)]:
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
    with pytest.raises(FormatError, match="format version 99; this packer reads version 1"):
        fmt.open_shard(path)
    path.write_bytes(good[:10])
    with pytest.raises(FormatError, match="shorter than the 64-byte header"):
        fmt.open_shard(path)


def test_checksum_mismatch_found_by_verify(tmp_path, byte_tok):
    from packer import config as C
    from packer.pipeline import pack

    from conftest import sft_records, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(30))
    pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=256))
    PackedShards(tmp_path / "r", verify=True)
    shard = next((tmp_path / "r" / "shards").glob("*.bin"))
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
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
    import json

    from packer.manifest import SEAL, read_manifest, seal

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


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=60), st.integers(200, 6000))
def test_shards_stay_under_shard_bytes_unless_one_pack_alone_exceeds_it(lengths, limit):
    import tempfile

    from packer.pipeline import pack
    from packer.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "d.jsonl"
        data.write_text("".join(json.dumps({"text": "x" * n}) + "\n" for n in lengths))
        pack([str(data)], Path(d) / "r", tokenizer=load_tokenizer("byte"),
             tokenize_config=C.TokenizeConfig(kind="text"), plan_config=C.PlanConfig(pack_len=256, overlong="split"),
             write_config=C.WriteConfig(shard_bytes=limit))
        for p in sorted((Path(d) / "r" / "shards").glob("*.bin")):
            shard = fmt.open_shard(p)
            assert p.stat().st_size <= limit or shard.num_packs == 1, (p.name, p.stat().st_size, shard.num_packs)
