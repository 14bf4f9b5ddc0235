"""Preference optimization on packed batches at its short, documented path (the code lives in
packer.train.preference).

    from packer.preference import sequence_logps, pairs, dpo
"""

from packer.train.preference import (bradley_terry, dpo, kto, last_token_scores, orpo, pairs, sequence_logps,
                                     shared_prompt_mask, simpo, unpaired)

__all__ = ["sequence_logps", "pairs", "unpaired", "dpo", "simpo", "orpo", "kto", "bradley_terry",
           "last_token_scores", "shared_prompt_mask"]
