# seq2seq: every target sets itself up first (virtualenv + dependencies, once).
PYTHON  ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
CONFIG  ?= configs/tatoeba-en-fr.yaml
ARGS    ?=
# Training processes on this machine (DEVICES=2: DDP, gloo on CPU, nccl on GPUs); default: Lightning's.
DEVICES ?=
# The newest best.ckpt under checkpoints/, unless CKPT=path is given.
CKPT    ?= $(shell ls -t checkpoints/*/best.ckpt 2>/dev/null | head -n 1)
BIN      = $(VENV)/bin

.PHONY: setup train translate evaluate serve test lint bench ablation clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

train: setup
	$(BIN)/seq2seq train --config $(CONFIG) \
		$(if $(DEVICES),--trainer.devices $(DEVICES)) $(if $(filter-out 1,$(DEVICES)),--trainer.strategy ddp) $(ARGS)

translate: setup
	@test -n "$(CKPT)" || { echo "No checkpoint found: run 'make train' first or pass CKPT=path" >&2; exit 1; }
	@$(BIN)/seq2seq translate --checkpoint $(CKPT) $(ARGS)

evaluate: setup
	@test -n "$(CKPT)" || { echo "No checkpoint found: run 'make train' first or pass CKPT=path" >&2; exit 1; }
	$(BIN)/seq2seq evaluate --checkpoint $(CKPT) $(ARGS)

# http://127.0.0.1:8000/ (the page), /docs (the API); ARGS="--port 9000 --api-key KEY --beam-size 5"
serve: setup
	@test -n "$(CKPT)" || { echo "No checkpoint found: run 'make train' first or pass CKPT=path" >&2; exit 1; }
	$(BIN)/seq2seq serve --checkpoint $(CKPT) $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

# ruff: the lint rules and the formatter's style are in pyproject.toml
lint: setup
	$(BIN)/ruff check seq2seq tests docs
	$(BIN)/ruff format --check seq2seq tests docs

bench: setup
	$(BIN)/seq2seq bench $(ARGS)

# one 15-minute run per variant (cell, attention rule, decoder): about 100 minutes in all
ablation: setup
	$(BIN)/seq2seq ablation $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
