# The two set-up commands of the README: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= out/demo

.PHONY: demo test lint fixtures bench clean

$(BIN)/lossmask: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/lossmask
	$(BIN)/lossmask prepare fixtures/data/openai.jsonl fixtures/data/sharegpt.json fixtures/data/alpaca.json \
		fixtures/data/prompt_completion.jsonl fixtures/data/tools.jsonl \
		--tokenizer fixtures/tokenizer --out $(DEMO_OUT)/shards
	@echo
	@echo "shards:   $(DEMO_OUT)/shards/*.arrow"
	@echo "manifest: $(DEMO_OUT)/shards/manifest.json"

lint: $(BIN)/lossmask
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python scripts/make_fixtures.py --check
	$(BIN)/pytest -n 2 -q

fixtures: $(BIN)/lossmask
	$(BIN)/python scripts/make_fixtures.py

clean:
	rm -rf out .pytest_cache
