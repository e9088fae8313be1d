# Two commands on a fresh clone: `make run` (the showcase study) and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean runtime runtime-aarch64 runtime-test

$(BIN)/.installed: pyproject.toml setup.py sparsernn/kernels/_kernels.c $(wildcard runtime/src/*.[ch])
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/sparsernn study configs/showcase/study.yaml --out runs/showcase

test: $(BIN)/.installed
	$(BIN)/ruff check sparsernn tests benchmarks scripts examples
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/pruner_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info sparsernn/kernels/*.so

# -- the C runtime: libsparsernn.a and sparsernn-run, with a C compiler and make alone ----------------
# x86: built for this machine (-march=native: AVX2 where present; AVX-512 found at run time); aarch64:
# cross-built with Debian's aarch64-linux-gnu-gcc (NEON is the baseline there), linked statically so
# qemu-aarch64 runs it without an aarch64 libc. OPENMP=1 adds threads (libgomp; not libc only).
RUNTIME_SOURCES := $(wildcard runtime/src/*.c)
RUNTIME_HEADERS := $(wildcard runtime/src/*.h) runtime/include/sparsernn.h
RUNTIME_CFLAGS := -std=c11 -O3 -fno-wrapv -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Wno-unknown-pragmas \
                  -Iruntime/include -Iruntime/src $(if $(OPENMP),-fopenmp)
AARCH64_CC ?= aarch64-linux-gnu-gcc
QEMU ?= qemu-aarch64

build/runtime/%.o: runtime/src/%.c $(RUNTIME_HEADERS)
	@mkdir -p $(@D)
	$(CC) $(RUNTIME_CFLAGS) -march=native -c $< -o $@
build/aarch64/%.o: runtime/src/%.c $(RUNTIME_HEADERS)
	@mkdir -p $(@D)
	$(AARCH64_CC) $(RUNTIME_CFLAGS) -c $< -o $@
build/runtime/libsparsernn.a: $(RUNTIME_SOURCES:runtime/src/%.c=build/runtime/%.o)
	$(AR) rcs $@ $^
build/aarch64/libsparsernn.a: $(RUNTIME_SOURCES:runtime/src/%.c=build/aarch64/%.o)
	aarch64-linux-gnu-ar rcs $@ $^
build/runtime/sparsernn-run: runtime/cli/sparsernn-run.c build/runtime/libsparsernn.a
	$(CC) $(RUNTIME_CFLAGS) -march=native $< build/runtime/libsparsernn.a -lm -o $@
build/aarch64/sparsernn-run: runtime/cli/sparsernn-run.c build/aarch64/libsparsernn.a
	$(AARCH64_CC) $(RUNTIME_CFLAGS) -static $< build/aarch64/libsparsernn.a -lm -o $@

runtime: build/runtime/libsparsernn.a build/runtime/sparsernn-run
runtime-aarch64: build/aarch64/libsparsernn.a build/aarch64/sparsernn-run
