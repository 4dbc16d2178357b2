# `make run` and `make test` each bootstrap .venv themselves, from a clean clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint typecheck unit venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# compat mode puts the checkout on sys.path, so twistd finds
	# twisted/plugins/portunus_plugins.py straight from the source tree.
	$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	bash contrib/demo/control-plane-demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check portunus tests twisted contrib
	$(VENV)/bin/ruff format --check portunus tests twisted contrib

typecheck: $(STAMP)
	$(VENV)/bin/mypy portunus

unit: $(STAMP)
	$(PY) contrib/ci/trial_summary.py $(TRIAL_ARGS) tests

# Lint and type errors count as failures in the closing summary line.
test: $(STAMP)
	$(PY) contrib/ci/trial_summary.py --pre "$(MAKE) --no-print-directory lint" \
		--pre "$(MAKE) --no-print-directory typecheck" $(TRIAL_ARGS) tests

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info twisted/plugins/dropin.cache

# Benchmarks (contrib/bench/run.py, method in docs/performance.md): installs
# iperf3, haproxy, socat and a C compiler with apt-get when missing, writes
# bench-results/latest.{json,md}. BENCH_ARGS=--quick for a short run. Sets up
# .venv only if it is missing, so it never reinstalls under a running test.
.PHONY: bench
bench:
	@test -x $(PY) || $(MAKE) --no-print-directory venv
	@missing=""; \
	for tool in iperf3 haproxy socat; do \
		command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; \
	done; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update && apt-get install -y $$missing; \
	fi
	$(PY) contrib/bench/run.py $(BENCH_ARGS)
