# Xueliang Hub. Every target that needs the toolchain runs scripts/setup first;
# it is idempotent and takes well under a second when everything is present.
SHELL := /bin/bash
VENV := .venv
# extra pytest arguments, e.g. make test PYTEST_ARGS='-x -k audit'
PYTEST_ARGS ?=

.PHONY: setup run test bench clean-var

setup:
	bash scripts/setup

run: setup
	$(VENV)/bin/xlhub run

# make's own exit status is 2 whenever a recipe fails, whatever pytest returned.
test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	@set -e; found=0; \
	for f in bench/*/run.py bench/*.py; do \
		[ -f "$$f" ] || continue; \
		case "$$(basename "$$f")" in _*|conftest.py) continue ;; esac; \
		found=1; echo "[bench] $$f"; $(VENV)/bin/python "$$f"; \
	done; \
	[ "$$found" = 1 ] || echo "[bench] no bench/*/run.py or bench/*.py found"

clean-var:
	rm -rf var/
