# Two commands matter: `make demo` and `make test`. Both set up .venv from nothing but Python.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint format eval model-card bench train-default clean

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

test: setup  ## the whole suite (unit, end to end on the embedded models, lint)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

eval: setup  ## the embedded sweep + report and plots (docs/results/eval/, ~20 min)
	OMP_NUM_THREADS=1 $(BIN)/python -m langchain_tts.eval.model_card --suite eval --n 80
	$(BIN)/tts report docs/results/eval/sweep.jsonl --out docs/results/eval \
		--title "Embedded models: accuracy vs compute (make eval, 80 test problems)"

model-card: setup  ## the full model-card sweep (hours on 2 cores; docs/results/embedded_sweep*)
	OMP_NUM_THREADS=1 $(BIN)/python -m langchain_tts.eval.model_card

bench: setup  ## orchestration overhead, HTTP batching, scaling, embedded models (docs/performance.md)
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.run_all

train-default: setup  ## rebuild the embedded weights from scratch (52 min on 2 cores)
	$(BIN)/tts train-default

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
