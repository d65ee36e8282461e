# Benchmark targets; included from the main Makefile (`include bench/bench.mk`). Paths are relative to the repo root.
#   make bench        full run (~12 min): bench/results/<date>.{json,md}, PNG plots, docs/performance.md
#   make bench-quick  every scenario at small scale (~2 min) into bench/results/tmp/, docs untouched
#   make bench-deps   only install what the bench needs (apt: gcc nginx libnginx-mod-nchan redis-server; pip)
BENCH_PY ?= .venv/bin/python

.PHONY: bench bench-quick bench-deps bench-loadgen bench-lint bench-clean bench-profile

bench-deps:
	@test -x $(BENCH_PY) || $(MAKE) install
	VENV_PY=$(BENCH_PY) bash bench/install-deps.sh

bench-loadgen: bench-deps
	@mkdir -p bench/build
	gcc -Wall -Wextra -Werror -O2 -o bench/build/loadgen bench/loadgen.c

bench: bench-loadgen
	$(BENCH_PY) bench/run.py

bench-quick: bench-loadgen
	BENCH_QUICK=1 $(BENCH_PY) bench/run.py

bench-lint:
	$(BENCH_PY) -m ruff check bench
	gcc -Wall -Wextra -Werror -O2 -fsyntax-only bench/loadgen.c

bench-clean:
	rm -rf bench/build bench/results/tmp

# Where ssehub's time goes during fan-out (py-spy; BENCH_PROFILE_RATE events/s to 1,000 subscribers, default 200).
bench-profile: bench-loadgen
	$(BENCH_PY) bench/profile.py
