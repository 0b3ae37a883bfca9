# Quick start: `make serve` runs the server, `make test` runs the tests.
VENV ?= .venv
WEIGHTS ?= tiny
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install serve test test-all weights

install:
	./scripts/bootstrap.sh

weights: install
	$(VENV)/bin/lift3d weights pull --profile $(if $(filter locked,$(WEIGHTS)),quality,$(WEIGHTS))

serve: weights
	$(VENV)/bin/lift3d serve --weights $(WEIGHTS) --host $(HOST) --port $(PORT)

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-all: install
	$(VENV)/bin/python -m pytest -m "" $(PYTEST_ARGS)
