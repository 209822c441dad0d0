# flowtrap — the two commands a new machine needs are `make demo` and `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench fixtures clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: start `flowtrap run` on 127.0.0.1, send it the bundled exports, show events
demo: $(STAMP)
	$(BIN)/python tools/demo.py

## test: the whole suite (real-exporter tests skip only where softflowd/pmacctd are missing)
test: $(STAMP)
	$(BIN)/python -m pytest

## test-fast: everything but the real-exporter and corpus tests
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not exporter and not corpus"

## lint: ruff and mypy --strict, as CI runs them
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## lab: the docker-compose lab live, without Docker, in network namespaces (root)
.PHONY: lab lab-clean
lab: $(STAMP)
	$(BIN)/python tools/lab.py run

## lab-clean: remove the network namespaces a killed `make lab` left behind
lab-clean: $(STAMP)
	$(BIN)/python tools/lab.py clean

## bench: decode + detect, live sweep beside nfcapd and nfacctd, --workers, cluster,
## memory, events burst, profile; prints one Markdown table, keeps results in
## build/bench/ (~14 min)
bench: $(STAMP)
	$(BIN)/python -m bench

## bench-quick: the same sections, shorter and v9 only (~2 min)
.PHONY: bench-quick
bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

## fixtures: rewrite the lab pcaps and re-capture the exporters' packets
fixtures: $(STAMP)
	$(BIN)/python tools/make_lab_pcap.py tests/fixtures
	$(BIN)/python tools/capture_exports.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
