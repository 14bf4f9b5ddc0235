"""The Hugging Face integration at its short, documented path (the code lives in packer.train.hf).

    from packer.hf import PackedCollator, use_packer_attention
    from packer.hf import PreferenceTrainer, reference_logps   # --kind preference runs
"""

from packer.train.hf.integration import (PackedCollator, UnsupportedModelError, batch_to_kwargs, check_model,
                                         check_vocab, register, use_packer_attention)
from packer.train.hf.preference import ReferenceLogps, reference_logps
from packer.train.hf.verify import verify

__all__ = ["use_packer_attention", "register", "check_model", "check_vocab", "PackedCollator", "batch_to_kwargs",
           "UnsupportedModelError", "verify", "PreferenceTrainer", "reference_logps", "ReferenceLogps"]


def __getattr__(name: str):
    if name == "PreferenceTrainer":  # a transformers.Trainer subclass: transformers is imported when it is asked for
        from packer.train.hf.preference import _trainer_class

        return _trainer_class()
    raise AttributeError(f"module 'packer.hf' has no attribute {name!r}")
