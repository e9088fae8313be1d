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

test: $(BIN)/.installed runtime-test
	$(BIN)/ruff check sparsernn tests benchmarks scripts examples runtime
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
CLI := runtime/cli/sparsernn-run.c runtime/cli/npy.c
build/runtime/sparsernn-run: $(CLI) runtime/cli/npy.h build/runtime/libsparsernn.a
	$(CC) $(RUNTIME_CFLAGS) -march=native $(CLI) build/runtime/libsparsernn.a -lm -o $@
build/aarch64/sparsernn-run: $(CLI) runtime/cli/npy.h build/aarch64/libsparsernn.a
	$(AARCH64_CC) $(RUNTIME_CFLAGS) -static $(CLI) build/aarch64/libsparsernn.a -lm -o $@

runtime: build/runtime/libsparsernn.a build/runtime/sparsernn-run
runtime-aarch64: build/aarch64/libsparsernn.a build/aarch64/sparsernn-run

# The runtime's tests with make and a C compiler alone: the fixtures against PyTorch's outputs, no
# allocation in a step, the errors (with the widest instruction set, and with AVX2 only); the same under qemu-aarch64 as a Cortex-A53 (NEON, no dotprod) and as
# -cpu max (where the cross compiler and qemu are installed); and the loader fuzzed with ASan + UBSan
# (FUZZ mutations of each fixture).
FUZZ ?= 2000
WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign
TEST_SOURCES := runtime/tests/test_runtime.c runtime/cli/npy.c
build/runtime/test_runtime: $(TEST_SOURCES) build/runtime/libsparsernn.a
	$(CC) $(RUNTIME_CFLAGS) -D_GNU_SOURCE -Iruntime/cli $(TEST_SOURCES) build/runtime/libsparsernn.a -lm $(WRAP) -o $@
build/aarch64/test_runtime: $(TEST_SOURCES) build/aarch64/libsparsernn.a
	$(AARCH64_CC) $(RUNTIME_CFLAGS) -D_GNU_SOURCE -Iruntime/cli -static $(TEST_SOURCES) build/aarch64/libsparsernn.a -lm \
		$(WRAP) -o $@
build/fuzz/fuzz: runtime/tests/fuzz.c $(RUNTIME_SOURCES) $(RUNTIME_HEADERS)
	@mkdir -p $(@D)
	$(CC) $(RUNTIME_CFLAGS) -O1 -g -march=native -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION \
		-fsanitize=address,undefined -fno-sanitize-recover=all $(RUNTIME_SOURCES) $< -lm -o $@

runtime-test: build/runtime/test_runtime build/runtime/sparsernn-run build/fuzz/fuzz
	build/runtime/test_runtime runtime/tests/fixtures
	SPARSERNN_ISA=avx2 build/runtime/test_runtime runtime/tests/fixtures  # the AVX2 kernels where AVX-512 runs
	@if command -v $(AARCH64_CC) >/dev/null && command -v $(QEMU) >/dev/null; then \
		$(MAKE) --no-print-directory build/aarch64/test_runtime build/aarch64/sparsernn-run && \
		for cpu in cortex-a53 max; do echo "qemu-aarch64 -cpu $$cpu:"; \
			$(QEMU) -cpu $$cpu build/aarch64/test_runtime runtime/tests/fixtures || exit 1; done; \
	else echo "aarch64: skipped ($(AARCH64_CC) or $(QEMU) not installed: apt-get install gcc-aarch64-linux-gnu qemu-user)"; fi
	@for model in runtime/tests/fixtures/*.safetensors; do build/fuzz/fuzz $$model $(FUZZ) || exit 1; done
