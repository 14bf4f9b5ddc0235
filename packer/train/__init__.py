"""Training on a run: the only layer that imports torch.

    reader.py     PackedShards: a run's packs as torch tensors (a torch Dataset over the shards format)
    loader.py     PackedLoader: batches for ranks and epochs, resume, prefetch.py's background builder,
                  collate.py's compiled batch kernel
    attention/    varlen attention, one module per backend and the registry that picks one
    loss.py       losses that stay exact under gradient accumulation and data parallelism
    model.py      a small Llama-style model that trains on packed batches
    hf/           the Hugging Face integration: the attention hook, the per-family checks (families.py)
                  and the packed-vs-unpacked verifier (verify.py)

Short documented paths re-export the public names: packer.hf, packer.attention, packer.loss.
"""
