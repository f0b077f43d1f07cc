# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs (Python packages with pip,
# Debian packages with apt-get for the real servers the tests drive).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# program:package pairs for the real protocol peers in the tests
TEST_DEBS := redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client knotd:knot openssl:openssl chromium:chromium
BENCH_DEBS := haproxy:haproxy nginx:nginx /usr/lib/nginx/modules/ngx_stream_module.so:libnginx-mod-stream \
	taskset:util-linux wrk:wrk h2load:nghttp2-client redis-server:redis-server redis-benchmark:redis-tools ss:iproute2

.PHONY: demo test test-slow lint bench venv clean deploy-check

$(BIN)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.dev: $(BIN)/.runtime
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

venv: $(BIN)/.dev

demo: $(BIN)/.runtime
	$(BIN)/evenflow demo

test: $(BIN)/.dev
	scripts/ensure-debian-packages $(TEST_DEBS)
	$(BIN)/pytest -m "not slow"

test-slow: $(BIN)/.dev
	scripts/ensure-debian-packages $(TEST_DEBS)
	# exit 5 means "no test selected": an empty slow suite is not a failure
	$(BIN)/pytest -m slow || [ $$? -eq 5 ]

lint: $(BIN)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(BIN)/.bench: $(BIN)/.dev
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench: $(BIN)/.bench
	scripts/ensure-debian-packages $(BENCH_DEBS)
	$(BIN)/python benchmarks/tcp_bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/ws_bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/grpc_bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/workers_bench.py $(BENCH_ARGS) --plot
	$(BIN)/python -m benchmarks.balance --simulate
	$(BIN)/python -m benchmarks.plots $$(ls -t benchmarks/results/tcp_bench-*.json | head -1) \
		$$(ls -t benchmarks/results/ws_bench-*.json | head -1) $$(ls -t benchmarks/results/grpc_bench-*.json | head -1) --out docs/images

deploy-check: $(BIN)/.dev
	scripts/check-deploy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
