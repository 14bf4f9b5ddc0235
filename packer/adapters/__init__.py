"""Adapters: PackedLoader in the shape other trainers take, one module per trainer (each imports its
framework, so import only the one you use).

    accelerate   loader(accelerator, path, batch_size, ...): this process's rank, never sharded twice
    lightning    PackedDataModule: train (and eval) loaders for a Lightning Trainer, with state_dict resume
    torchtitan   TitanLoader: (input_dict, labels) batches with pre-shifted labels and per-document
                 positions, stateful per rank as torchtitan's trainer checkpoints its dataloader
"""
