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
ALGORITHM ?= ortools
OUT      ?= build/packed
ARGS     ?=

.PHONY: pack test test-quick bench models mutants compare setup clean

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

# Pack DATA (default: the built-in sample) with every algorithm and compare the reports.
CDATA = $(if $(strip $(DATA)),$(DATA),build/sample.jsonl)
CTOK = $(if $(strip $(DATA)),$(TOKENIZER),byte)

compare: $(BIN)/.installed
	$(if $(strip $(DATA)),,$(BIN)/packer sample build/sample.jsonl)
	for a in nextfit ffd bfd ortools; do \
		$(BIN)/packer pack $(CDATA) --out $(OUT)-compare/$$a --tokenizer $(CTOK) --pack-len $(PACK_LEN) \
			--kind $(KIND) --algorithm $$a --quiet $(ARGS) > /dev/null || exit 1; done
	$(BIN)/packer compare $(OUT)-compare/nextfit $(OUT)-compare/ffd $(OUT)-compare/bfd $(OUT)-compare/ortools \
		--format markdown --out $(OUT)-compare/comparison.md
	$(BIN)/packer compare $(OUT)-compare/nextfit $(OUT)-compare/ffd $(OUT)-compare/bfd $(OUT)-compare/ortools \
		--format html --out $(OUT)-compare/comparison.html > /dev/null

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# Without the tests that start a server or a cluster (marked slow: the S3 server); CI runs `make test`.
test-quick: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow"

bench: $(BIN)/.installed
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

# Every causal-LM family of the installed transformers, packed vs unpacked: docs/MODELS.md and
# packer/train/hf/families.py (what use_packer_attention consults). Outside CI: ~15 minutes on 2 cores.
models: $(BIN)/.installed
	$(BIN)/python benchmarks/model_matrix.py

# Mutation testing of the invariant-bearing modules ([tool.mutmut] in pyproject.toml; ~minutes):
# prints every surviving mutant (pytest_add_cli_args_test_selection: the fast unit tests of these modules).
mutants: $(BIN)/.installed
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 || true
	$(BIN)/mutmut results

clean:
	rm -rf build $(VENV)
