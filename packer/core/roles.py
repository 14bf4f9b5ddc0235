"""What a tokenized row or a packed segment is, for the kinds whose examples come in groups (preference data).

Stored as uint8: the tokenized `role` column (0-5) and the shards' `segment_role` array (0-6); docs/FORMAT.md.
"""

PLAIN, CHOSEN, REJECTED, DESIRABLE, UNDESIRABLE, KL, PROMPT = range(7)
NAMES = {PLAIN: "plain", CHOSEN: "chosen", REJECTED: "rejected", DESIRABLE: "desirable",
         UNDESIRABLE: "undesirable", KL: "kl", PROMPT: "prompt"}
PAIRED = (CHOSEN, REJECTED)
UNPAIRED = (DESIRABLE, UNDESIRABLE)
MAX_ROW_ROLE = KL
"""The largest role of a tokenized row: PROMPT exists only in shards (the shared-prompt layout)."""
MAX_SEGMENT_ROLE = PROMPT
