# rconv build, test and demo entry points. See README.md.
#
#   make venv     .venv with the build and test tools (redone only when this Makefile changes)
#   make wheel    release wheel in dist/ (abi3, manylinux_2_17, built with maturin + zig)
#   make install  install exactly that wheel into .venv (not editable)
#   make test     install, then `cargo test` and pytest against the installed wheel
#   make demo     install (+ demo extras), then `python -m rconv demo`
#   make bench    `cargo bench`, then `python -m rconv bench`
#   make clean    remove .venv, dist/ and target/
#
# Needs only python3 (>= 3.9, with venv and pip) and a Rust toolchain; everything else is
# installed from PyPI into .venv. The cargo build is cached in target/.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DIST   := dist

# Tool versions: ranges known to work together (maturin 1.16 + ziglang 0.17 tested); upper
# bounds keep a fresh machine from picking up a new major release that changes behaviour.
VENV_REQUIREMENTS := \
	"maturin>=1.9,<2" \
	"ziglang>=0.13,<0.18" \
	"numpy>=1.21,<3" \
	"pytest>=7,<10" \
	"hypothesis>=6.80,<7" \
	"tqdm>=4.60,<5" \
	"matplotlib>=3.5,<4"
# What `python -m rconv demo` needs beyond the wheel's own dependencies (rconv[viz,progress]);
# the test venv has them too, so the picture tests run.
DEMO_REQUIREMENTS := "matplotlib>=3.5,<4" "tqdm>=4.60,<5"

# One wheel for every x86-64 Linux with glibc >= 2.17 and CPython >= 3.9 (abi3, set by
# pyo3's abi3-py39 feature in Cargo.toml). zig links against the old glibc symbols.
MANYLINUX := manylinux_2_17

VENV_STAMP := $(VENV)/.rconv-venv.stamp
DEMO_STAMP := $(VENV)/.rconv-demo.stamp

# Never let a caller's environment make imports come from the source tree.
unexport PYTHONPATH

.PHONY: venv wheel install test demo bench clean

venv: $(VENV_STAMP)

$(VENV_STAMP): Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(VENV_REQUIREMENTS)
	touch $@

# Always re-run: cargo decides what to rebuild. Old rconv wheels are removed first, so dist/
# holds exactly the wheel just built and `install` cannot pick a stale one.
wheel: $(VENV_STAMP)
	@# SIMD is chosen at run time; a target-cpu flag would make the wheel crash on older CPUs.
	@if [[ "$${RUSTFLAGS:-} $${CARGO_ENCODED_RUSTFLAGS:-}" == *target-cpu* ]] || \
	    grep -qs 'target-cpu' .cargo/config.toml .cargo/config "$${CARGO_HOME:-$$HOME/.cargo}/config.toml" "$${CARGO_HOME:-$$HOME/.cargo}/config"; then \
	  echo "error: a target-cpu rustflag is set (RUSTFLAGS or a cargo config); the release wheel must not use one" >&2; \
	  exit 1; \
	fi
	rm -f $(DIST)/rconv-*.whl
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/maturin build --release --zig \
	  --compatibility $(MANYLINUX) --interpreter $(PY) --out $(DIST)
	@ls $(DIST)/rconv-*.whl

install: wheel
	@wheels=( $(DIST)/rconv-*.whl ); \
	if [[ $${#wheels[@]} -ne 1 || ! -f "$${wheels[0]}" ]]; then \
	  echo "error: expected exactly one rconv wheel in $(DIST)/, found: $${wheels[*]}" >&2; exit 1; \
	fi; \
	echo "$(PIP) install --force-reinstall --no-deps $${wheels[0]}"; \
	$(PIP) install --quiet --force-reinstall --no-deps "$${wheels[0]}"
	@# --no-deps: the wheel's one runtime dependency, numpy, is already in the venv.
	@cd /tmp && $(CURDIR)/$(PY) -c 'import rconv; print("installed rconv", rconv.__version__, "from", rconv.__file__)'

# PYTHONSAFEPATH keeps the current directory off sys.path, so `import rconv` finds the
# installed wheel in site-packages, never python/rconv in this checkout (which has no native
# module). The first line checks that before the tests run.
test: install
	cargo test
	PYTHONSAFEPATH=1 $(PY) -c 'import rconv, sys; f = rconv.__file__; print("testing rconv from", f); sys.exit("error: rconv imported from the source tree" if "site-packages" not in f else 0)'
	PYTHONSAFEPATH=1 $(PY) -m pytest tests

$(DEMO_STAMP): $(VENV_STAMP)
	$(PIP) install --quiet $(DEMO_REQUIREMENTS)
	touch $@

demo: install $(DEMO_STAMP)
	PYTHONSAFEPATH=1 $(PY) -m rconv demo

# `python -m rconv bench` compares with the peers that are installed (torch, onnxruntime + onnx)
# and skips the others; none is installed by default (torch alone is a multi-GB download).
# To compare: make bench BENCH_PEERS='torch onnx onnxruntime'. Results also go to target/.
BENCH_PEERS ?=

bench: install
	cargo bench
	$(if $(strip $(BENCH_PEERS)),$(PIP) install --quiet $(BENCH_PEERS))
	PYTHONSAFEPATH=1 $(PY) -m rconv bench --json target/rconv-bench.json

# Back to a fresh clone's state: also drops the cargo cache in target/.
clean:
	rm -rf $(VENV) $(DIST) target .pytest_cache .hypothesis
	find python tests -name __pycache__ -type d -prune -exec rm -rf {} +
