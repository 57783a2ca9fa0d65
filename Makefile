# The two commands: `make run` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck importlint unit bench bench-results bench-l4 bench-http bench-tls clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## make run: serve the embedded quickstart on loopback (no cluster needed)
run: $(STAMP)
	@echo "meshgate: serving examples/quickstart.yaml on loopback. Try, in another shell:"
	@echo "  curl http://127.0.0.1:8080/                   # built-in hello backend"
	@echo "  curl http://127.0.0.1:8082/                   # the same, relayed over TCP"
	@echo "  echo hi | socat - TCP:127.0.0.1:8081          # built-in echo backend"
	@echo "  $(BIN)/meshgate status                    # listeners, connections, health"
	@echo "  curl -s http://127.0.0.1:9901/metrics | grep meshgate_"
	@echo "Stop with Ctrl-C (drains connections first)."
	$(BIN)/meshgate run -c examples/quickstart.yaml

## make test: lint, type-check, layering contracts, then the whole suite
test: $(STAMP) lint typecheck importlint unit

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

importlint: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest -q

## make bench: install the Debian packages it needs (bench/setup.sh), then
## run every contender and workload side by side (bench/suite.py, ~10 min);
## BENCH_ARGS passes options, e.g. make bench BENCH_ARGS=--quick
BENCH_ARGS ?=
bench: $(STAMP)
	sh bench/setup.sh
	$(BIN)/python bench/suite.py $(BENCH_ARGS)

## make bench-results: the same, and rewrite bench/RESULTS.md from this run
bench-results: $(STAMP)
	sh bench/setup.sh
	$(BIN)/python bench/suite.py --write-results bench/RESULTS.md $(BENCH_ARGS)

## one group of bench/suite.py's workloads; bench-tls adds bench/tls.py
## (handshake-to-first-byte latency, one connection at a time)
bench-l4 bench-http: $(STAMP)
	sh bench/setup.sh
	$(BIN)/python bench/suite.py --only $(@:bench-%=%) $(BENCH_ARGS)

bench-tls: $(STAMP)
	sh bench/setup.sh
	$(BIN)/python bench/suite.py --only tls $(BENCH_ARGS)
	$(BIN)/python bench/tls.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

## make fuzz: atheris on every byte parser, FUZZ_SECONDS each (default 60), new coverage
## kept in tests/fuzz/corpus/<harness>/ then merged (-merge=1); findings in .fuzz-artifacts/.
## atheris has a manylinux wheel for CPython 3.11 (libFuzzer inside): no clang needed.
FUZZ_SECONDS ?= 60
FUZZ ?=
.PHONY: fuzz
fuzz: $(STAMP)
	@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install --quiet --only-binary atheris -e '.[dev,fuzz]'
	$(BIN)/python -m tests.fuzz.run --seconds $(FUZZ_SECONDS) $(FUZZ)

## make stress: the stress suite (tests/stress, marker `stress`): connections held
## across reloads, wrk under reloads, slow clients (slowhttptest, slowloris), a
## connection flood, malformed hellos, SIGTERM under load, a soak
## (STRESS_SOAK_SECONDS, default 600) and sslyze; ~14 min on 2 cores. Needs
## wrk, slowhttptest, nginx and ss (iproute2), from apt as .ci/run installs
## them; installs the `stress` extra (slowloris). Figures, one JSON line per
## test: $(STRESS_REPORT).
STRESS_REPORT ?= .stress-report.jsonl
STRESS_ARGS ?=
.PHONY: stress
stress: $(STAMP)
	@test -x $(BIN)/slowloris || $(BIN)/python -m pip install --quiet -e '.[dev,stress]'
	STRESS_REPORT=$(STRESS_REPORT) $(BIN)/pytest -m stress -p no:randomly -o timeout=900 tests/stress $(STRESS_ARGS)
