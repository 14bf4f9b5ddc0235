"""Building a run, torch-free: input sources -> tokenized Arrow -> plan -> shards -> report.

    sources/      one module per input kind (JSON Lines, tables) and the registry that picks one
    tokenize.py   stage 1: records -> token ids and loss masks (templates.py, chats.py, load_tokenizer.py)
    plan.py       stage 2: lengths -> packs, through planners/ (one module per algorithm + registry)
    write.py      stage 3: plan + tokens -> shard files
    report.py     the efficiency report of a run (plots.py draws it)
    mixture.py    mixture files (YAML/JSON) -> inputs; demo_data.py: the built-in sample data

Stages meet only through the file formats in packer.core.formats, never import each other, and
never import torch (the contracts in pyproject.toml).
"""
