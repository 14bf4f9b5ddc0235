"""packer.core.arrow: the pandas-free converters give exactly what pyarrow's own converters give."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.core import arrow

TYPES = [(pa.int8(), np.int8), (pa.int32(), np.int32), (pa.int64(), np.int64), (pa.uint8(), np.uint8),
         (pa.uint16(), np.uint16), (pa.uint32(), np.uint32), (pa.float64(), np.float64)]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(TYPES), st.lists(st.integers(0, 120), max_size=40), st.integers(0, 40), st.integers(0, 40),
       st.integers(1, 4))
def test_the_converters_equal_pyarrows(typ, values, start, length, pieces):
    pa_type, dtype = typ
    data = np.asarray(values, dtype)
    mine = arrow.array(data, pa_type)
    assert mine.equals(pa.array(data, pa_type)) and mine.type == pa_type
    sliced = mine.slice(start, length)  # an offset into the buffer
    assert arrow.to_numpy(sliced).tolist() == sliced.to_numpy(zero_copy_only=False).tolist()
    cuts = np.linspace(0, len(data), pieces + 1).astype(int)
    chunked = pa.chunked_array([arrow.array(data[a:b], pa_type) for a, b in zip(cuts[:-1], cuts[1:])], pa_type)
    assert arrow.to_numpy(chunked).tolist() == data.tolist() and arrow.to_numpy(chunked).dtype == dtype


def test_lists_and_binaries_equal_pyarrows():
    offsets, values = [0, 2, 2, 5], np.arange(5, dtype=np.uint32)
    assert arrow.list_array(offsets, arrow.array(values, pa.uint32())).equals(
        pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values)))
    items = [b"ab", b"", b"cde"]
    assert arrow.large_binary(items).equals(pa.array(items, pa.large_binary()))


def test_nulls_and_other_types_are_refused():
    with pytest.raises(ValueError, match="nulls"):
        arrow.to_numpy(pa.array([1, None], pa.int64()))
    with pytest.raises(ValueError, match="string"):
        arrow.to_numpy(pa.array(["a"]))


def test_a_tokenized_chunk_with_nulls_is_a_format_error_naming_it(tmp_path):
    """Nulls (which the format never has) in a chunk read back: the file named, never a bare ValueError."""
    from packer.core.errors import FormatError
    from packer.core.formats import tokenized as tok

    table = tok.examples_table(np.arange(2), np.zeros(2), np.arange(2), np.array([2, 1]), np.array([5, 6, 7]),
                               np.array([0, 1, 1]))
    damaged = table.set_column(table.schema.get_field_index("role"), "role", pa.array([0, None], pa.uint8()))
    path = tmp_path / "chunk-00000.arrow"
    tok.write_chunk(damaged, path)
    with pa.OSFile(str(path), "r") as f, pytest.raises(FormatError, match="chunk-00000.arrow.*role"):
        tok._checked_table(path, f, {"examples": 2}, "re-run")
    with pytest.raises(ValueError, match="do not fit uint8"):
        arrow.array([1, 300], pa.uint8())
