"""The on-disk formats, one module each: schema, version, reader and writer, beside docs/FORMAT.md.

    tokenized.py   stage 1's Arrow chunks
    plan.py        stage 2's pieces, order and offsets
    shards.py      stage 3's shard files and the shards folder (ShardSet), what training reads
    export.py      `_export.json`, the metadata of every `packer export` folder

A change to any format is made in its module, in docs/FORMAT.md and in its golden test, together.
"""
