# Two commands matter: `make demo` and `make test`. Both set up .venv from nothing but Python.
# `make test-fast` is the quick lane while editing; research tooling runs as `python -m research.*`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint format eval model-card bench train-default clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: this is a local CPU wheel; any other spec pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,eval]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup  ## solve a question with PRM beam search on the embedded models
	$(BIN)/tts solve --compare-cot

# Test files run on TEST_WORKERS processes, each file on one (its module fixtures, such as a
# Postgres cluster or a served app, start once); each torch runs one thread.
TEST_WORKERS ?= 2

test: setup  ## the whole suite: lint, tests/ and research/tests/ (unit, end to end, training)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup  ## the suite without the slow end-to-end runs and training
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

eval: setup  ## the embedded sweep + report and plots (docs/results/eval/, ~20 min)
	OMP_NUM_THREADS=1 $(BIN)/python -m research.model_card --suite eval --n 80 \
		--out docs/results/eval/sweep.jsonl
	$(BIN)/tts report docs/results/eval/sweep.jsonl --out docs/results/eval \
		--title "Embedded models: accuracy vs compute (make eval, 80 test problems)"

model-card: setup  ## the full model-card sweep (hours on 2 cores; docs/results/embedded_sweep*)
	OMP_NUM_THREADS=1 $(BIN)/python -m research.model_card --out docs/results/embedded_sweep.jsonl

bench: setup  ## orchestration overhead, HTTP batching, scaling, embedded models (docs/performance.md)
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.run_all

train-default: setup  ## rebuild the shipped embedded weights from scratch (52 min on 2 cores)
	$(BIN)/tts train-default --out langchain_tts/models/weights

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
