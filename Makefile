# The two set-up commands of the README (`make demo`, `make test`) and the benchmarks.
# Binaries are static and land under target/$(TARGET)/ (see .cargo/config.toml).

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
TARGET := x86_64-unknown-linux-gnu
RELEASE := target/$(TARGET)/release
RUNS ?= 50
CI_BENCH_RUNS ?= 10

.PHONY: setup lint build release test fuzz demo dist deb bench bench-runtime bench-shim bench-image bench-probes bench-net bench-pull bench-build bench-cri ci-bench clean

setup:
	@scripts/setup

# The tree's habits, checked in CI before the tests: rustfmt.toml's format, clippy with -D warnings.
lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

build: setup
	cargo build --workspace --locked

release: setup
	cargo build --workspace --release --locked --bins --examples

# End-to-end tests need the sibling binaries (engine-init) built first.
# then a short run of the layer-unpacking fuzz target (FUZZ_SECONDS, default 30).
test: build
	cargo test --workspace --locked
	scripts/fuzz

fuzz:
	scripts/fuzz

demo: release
	BIN=$(RELEASE) scripts/demo

# the tarball of the release binaries, units, man pages and completions (target/dist/)
dist: release
	scripts/dist

# the Debian package of the release binaries (cargo-deb; target/debian/)
deb: release
	scripts/deb

bench: release
	BIN=$(RELEASE) RUNS=$(RUNS) scripts/bench

# CI's short benchmark after the tests: printed, reported under target/bench/, compared with
# the last report of this machine; it never fails the build.
ci-bench: release
	-BIN=$(RELEASE) RUNS=$(CI_BENCH_RUNS) CONCURRENCY=4 scripts/bench

bench-net: release
	BIN=$(RELEASE) RUNS=$(RUNS) scripts/bench-net

# a cold pull of a 5-layer ~100 MB image from a loopback registry, engine beside a private dockerd
bench-pull: release
	BIN=$(RELEASE) RUNS=$(or $(PULL_RUNS),5) scripts/bench-pull

bench-build: release
	BIN=$(RELEASE) RUNS=$(or $(BUILD_RUNS),5) scripts/bench-build

# pod starts through the CRI (RunPodSandbox + CreateContainer + StartContainer), engine beside a
# private containerd's CRI plugin
bench-cri: release
	BIN=$(RELEASE) RUNS=$(RUNS) scripts/bench-cri

bench-probes: release
	BIN=$(RELEASE) RUNS=$(RUNS) scripts/bench-probes

bench-runtime: release
	ENGINE_RUNTIME=$(RELEASE)/engine-runtime RUNS=$(RUNS) scripts/bench-runtime

bench-shim: release
	cargo run --release --locked -p engine-lifecycled --example bench_shim -- $(RUNS)

bench-image: release
	RUNS=$(RUNS) scripts/bench-image

clean:
	cargo clean
	rm -rf demo-out
