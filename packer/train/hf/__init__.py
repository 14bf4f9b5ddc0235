"""The Hugging Face integration (its documented path is packer.hf).

    integration.py   use_packer_attention, PackedCollator, batch_to_kwargs, the attention hook
    families.py      per model family: verified, refused (with the reason) or untested here
    verify.py        verify(make_model): packed vs unpacked logits, loss and gradients for any model

A new model-family fix goes here.
"""
