# Two commands: `make pack` and `make test`. Each sets up .venv on a fresh machine.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
# torch is pinned to the CPU build that ships on the project's machines; installing it first keeps
# the unpinned resolver from ever reaching for a multi-GB CUDA build.
TORCH    ?= torch==2.13.0

DATA     ?=
TOKENIZER ?= byte
PACK_LEN ?= 2048
KIND     ?= sft
ALGORITHM ?= bfd
OUT      ?= build/packed
ARGS     ?=

.PHONY: pack test bench setup clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

pack: $(BIN)/.installed
ifeq ($(strip $(DATA)),)
	$(BIN)/packer sample build/sample.jsonl
	$(BIN)/packer pack build/sample.jsonl --out $(OUT) --tokenizer byte --pack-len $(PACK_LEN) \
		--kind sft --algorithm $(ALGORITHM) $(ARGS)
else
	$(BIN)/packer pack $(DATA) --out $(OUT) --tokenizer $(TOKENIZER) --pack-len $(PACK_LEN) \
		--kind $(KIND) --algorithm $(ALGORITHM) $(ARGS)
endif

test: $(BIN)/.installed
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf build $(VENV)
