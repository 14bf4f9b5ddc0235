"""The Hugging Face integration at its short, documented path (the code lives in packer.train.hf).

    from packer.hf import PackedCollator, use_packer_attention
"""

from packer.train.hf.integration import (PackedCollator, UnsupportedModelError, batch_to_kwargs, check_model,
                                         check_vocab, register, use_packer_attention)
from packer.train.hf.verify import verify

__all__ = ["use_packer_attention", "register", "check_model", "check_vocab", "PackedCollator", "batch_to_kwargs",
           "UnsupportedModelError", "verify"]
