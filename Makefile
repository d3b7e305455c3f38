# The two set-up commands of the README: `make demo` and `make test`. Everything installs into .venv.
# `make demo` installs lossmask and its runtime dependencies only; `make test` (and every other target that runs
# tests, lint or benchmarks) adds the dev extra: the test oracles (transformers, datasets, CPU torch, TRL) and the
# trainers' own readers (OLMo-core, datatrove).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEV := $(VENV)/.dev-installed
# MosaicML's own MDS reader for tests/consumers/test_export_mds.py. mosaicml-streaming pins numpy<2.2 and
# transformers<5, which the dev extra excludes, so it goes beside the venv without its pins; the test puts this
# folder after site-packages, so the venv's numpy is the one imported.
MDS_READER := mosaicml-streaming==0.13.0 xxhash zstd python-snappy cramjam brotli catalogue pillow
# The released readers of two trainers that pip cannot install here (tests/consumers/foreign_readers.py says
# why): their pure-Python wheels, downloaded and unpacked, never installed; the tests import their readers.
FOREIGN_READERS := megatron-bridge==0.6.2 llm-foundry==0.22.0
DEMO_OUT ?= out/demo

.PHONY: demo test test-fast lint fixtures bench bench-prepare bench-pack bench-scale bench-export bench-cluster clean

$(BIN)/lossmask: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV): $(BIN)/lossmask pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/mds-reader $(MDS_READER)
	rm -rf $(VENV)/foreign && mkdir -p $(VENV)/foreign/wheels
	$(BIN)/python -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: \
		-d $(VENV)/foreign/wheels $(FOREIGN_READERS)
	$(BIN)/python -m zipfile -e $(VENV)/foreign/wheels/megatron_bridge-*.whl $(VENV)/foreign/megatron-bridge
	$(BIN)/python -m zipfile -e $(VENV)/foreign/wheels/llm_foundry-*.whl $(VENV)/foreign/llm-foundry
	touch $@

DEMO_INPUTS := fixtures/data/openai.jsonl fixtures/data/sharegpt.json fixtures/data/alpaca.json \
	fixtures/data/prompt_completion.jsonl fixtures/data/tools.jsonl

# The main job end to end on the bundled fixtures: prepare -> audit -> train (the proof) -> export; then where
# it all is.
demo: $(BIN)/lossmask
	$(BIN)/lossmask prepare $(DEMO_INPUTS) --tokenizer fixtures/tokenizer --out $(DEMO_OUT)/shards
	$(BIN)/lossmask audit $(DEMO_OUT)/shards --show 1 --html $(DEMO_OUT)/audit.html
	$(BIN)/lossmask train $(DEMO_OUT)/shards --out $(DEMO_OUT)/run --steps 300 --batch-size 4
	$(BIN)/lossmask explain $(DEMO_OUT)/shards --row 0 --run $(DEMO_OUT)/run
	$(BIN)/lossmask export $(DEMO_OUT)/shards --to hf $(DEMO_OUT)/hf -q
	@echo
	@echo "shards:    $(DEMO_OUT)/shards/*.arrow  (manifest: $(DEMO_OUT)/shards/_manifest.json)"
	@echo "audit:     $(DEMO_OUT)/audit.html"
	@echo "training:  $(DEMO_OUT)/run/metrics.jsonl, curve $(DEMO_OUT)/run/loss.svg"
	@echo "hf export: $(DEMO_OUT)/hf"

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python scripts/make_fixtures.py --check
	$(BIN)/pytest -n 2 -q

# The edit-test loop: everything but the tests marked slow (resume, memory, fuzz, finite differences...),
# realworld (../shared/realworld) and ray (a local Ray cluster); under 2 minutes on 2 cores. No ruff.
test-fast: $(DEV)
	$(BIN)/pytest -n 2 -q -m "not slow and not realworld and not ray"

# Benchmarks live apart from the tests: numbers to read, never timed assertions. They need ../shared/realworld.
bench: bench-prepare bench-pack bench-scale bench-export

bench-prepare: $(DEV)
	$(BIN)/python bench/prepare.py

# Packing: 1M documents with the real length mix at N = 2048 and 4096, best-fit decreasing against baselines.
bench-pack: $(DEV)
	$(BIN)/python bench/pack.py

# The local engine against Ray on this machine, 20k conversations, and the Ray driver's RSS and bytes read.
bench-scale: $(DEV)
	$(BIN)/python bench/scale.py

# A simulated Ray cluster (Ray's own multi-node harness): 1 node, then 2 nodes of one CPU each, 20k conversations.
bench-cluster: $(DEV)
	$(BIN)/python bench/cluster.py

# Every export target on 1M documents: wall, CPU and peak RSS of each as its own process.
bench-export: $(DEV)
	$(BIN)/python bench/export.py

fixtures: $(DEV)
	$(BIN)/python scripts/make_fixtures.py

clean:
	rm -rf out .pytest_cache
