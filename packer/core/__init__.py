"""What every layer stands on: errors, settings, on-disk formats, storage and executors. No torch.

    errors.py, config.py                 exceptions that say what to do; the frozen stage configs
    formats/                             one module per on-disk format: tokenized, plan, shards, export
    manifest.py                          stage folders: temporary name, manifest last, seal, resume
    labels.py, ranges.py, context_parallel.py   the definitions of labels, positions and CP padding
    storage.py, runstore.py              inputs and run folders on local disks and object stores (fsspec)
    cache.py, buildlock.py               the user's cache folder; one builder per run folder
    executors/                           where map steps run: local processes or Ray
    progress.py                          progress bars
"""
