# The two commands a newcomer runs: `make serve` and `make test`. Both create .venv and install everything.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install system-deps triton-client serve test lint typecheck unit wheel clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -c constraints.txt -e '.[dev]'
	@# byte-compiled on every core (pip compiles on one: 35 s + 16 s instead of 71 s); like pip, files
	@# that do not compile are skipped (torch ships Python 3.12 test files): its exit status is not ours
	$(PY) -m compileall -qq -j0 $(VENV)/lib || true
	touch $(STAMP)

install: $(STAMP)

# promtool and prometheus (Debian package) check metrics, rules and config in the tests; chromium runs
# the live page with a fake camera.
system-deps:
	@command -v promtool >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } \
	  || echo "warning: install the Debian package 'prometheus' (promtool) for the observability tests"
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server; } \
	  || echo "warning: install the Debian package 'redis-server' for the shared result cache tests"
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } \
	  || echo "warning: install the Debian package 'chromium' for the live page's browser test"

# The real tritonclient for the Open Inference Protocol tests, in its own environment: it pins a
# protobuf older than the one our stubs need.
TRITON_STAMP := .venv-triton/.installed-stamp
$(TRITON_STAMP):
	test -x .venv-triton/bin/python || python3 -m venv .venv-triton
	.venv-triton/bin/python -m pip install -q 'tritonclient[http,grpc]>=2.40' numpy
	touch $(TRITON_STAMP)

triton-client: $(TRITON_STAMP)

# The wheel users install and the Dockerfile installs: dist/tsm_serve-<version>-py3-none-any.whl.
wheel: install
	$(PY) tools/build_wheel.py

serve: install
	$(VENV)/bin/tsm-serve serve

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format -d --exit-code
	$(PY) tools/gen_proto.py --check

typecheck: install
	$(VENV)/bin/mypy

# The whole suite, with the coverage of service/ (also inside the server and decode-worker processes the
# tests start), as three pytest processes side by side (tools/run_tests.py says why and how files split).
unit: install system-deps triton-client
	$(PY) tools/run_tests.py

# Independent steps run side by side: the tritonclient environment installs while the main one does, and
# ruff, buf and mypy run together (mypy is one core for ~20 s on a fresh clone).
test:
	$(MAKE) --no-print-directory -j2 --output-sync=target install triton-client
	$(MAKE) --no-print-directory -j2 --output-sync=target lint typecheck system-deps
	$(MAKE) --no-print-directory unit

clean:
	rm -rf $(VENV) .venv-triton dist .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.*
