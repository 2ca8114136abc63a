# The two commands: `make run` and `make test`.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
ATLAS := $(TARGET_DIR)/release/atlas
SEEDS ?= 100000

.PHONY: run test deps test-deps build check fmt bench bench-compare fuzz clean sim sim-seed soak

# Build needs: cmake, clang/libclang, g++.
deps:
	@scripts/install-deps.sh

# Test needs on top: curl (HTTPS client of the black-box tests), promtool (Debian's
# prometheus, lints /metrics), testparm (samba-common-bin, checks the rendered smb.conf),
# pebble and pebble-challtestsrv (the ACME CA and DNS server `tls: {acme}` is tested against).
test-deps:
	@scripts/install-deps.sh curl prometheus samba-common-bin openssl pebble

build: deps
	cargo build --release --workspace --bins --examples

# Start one node with the embedded default config (data under ./data).
run: build
	@mkdir -p data
	$(ATLAS) serve

# Everything the tests need, then the whole suite (unit, property, black-box).
test: build test-deps
	cargo test --release --workspace

fmt:
	cargo fmt --all

# The real-process cluster tests with every nemesis phase stretched: SOAK_SECONDS=600 runs
# each phase 60 times longer than in make test (histories still checked for linearizability),
# and the long-lived tests at full size (writes at full speed for SOAK_SECONDS, 128 MiB blobs).
SOAK_SECONDS ?= 300
soak: build test-deps
	ATLAS_SOAK_SECONDS=$(SOAK_SECONDS) cargo test --release -p atlas-tests --test cluster --test long_lived -- --test-threads=1 --nocapture

# Long deterministic-simulator sweeps of the consensus core (make test runs 2,000 seeds).
# SEEDS seeds starting at FROM; FAULTS=heavy triples partitions and crashes. A failing seed
# prints itself and replays with sim-seed. MEMBERSHIP=1 changes membership on every seed.
FROM ?= 2000
sim:
	ATLAS_SIM_SEEDS=$(SEEDS) ATLAS_SIM_FROM=$(FROM) $(if $(FAULTS),ATLAS_SIM_FAULTS=$(FAULTS)) $(if $(MEMBERSHIP),ATLAS_SIM_MEMBERSHIP=1) cargo test --release -p atlas --lib sim_sweep_long -- --ignored --nocapture

# Replay one simulator seed with its history (same FAULTS as the sweep); TRACE=1 prints
# every delivered message.
SEED ?= 0
sim-seed:
	ATLAS_SIM_SEED=$(SEED) $(if $(TRACE),ATLAS_SIM_TRACE=1) $(if $(MEMBERSHIP),ATLAS_SIM_MEMBERSHIP=1) cargo test --release -p atlas --lib sim_replay_seed -- --ignored --nocapture

check:
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings

# Benchmarks measure and report; they never gate CI.
# Peers the side-by-side benchmarks run against (Debian packages, installed when missing).
BENCH_PEERS := etcd-server etcd-client redis-server rocksdb-tools nginx wrk nghttp2-client fio
BENCH_SECONDS ?= 3
bench: build
	bash scripts/install-deps.sh $(BENCH_PEERS)
	cargo bench -p atlas-bench
	$(TARGET_DIR)/release/atlas-bench --spawn $(ATLAS)
	$(TARGET_DIR)/release/atlas-compare --atlas $(ATLAS) --seconds $(BENCH_SECONDS)

# Only the side-by-side comparison (ONLY=kv,blob,engine,edge,fsync picks parts).
bench-compare: build
	bash scripts/install-deps.sh $(BENCH_PEERS)
	$(TARGET_DIR)/release/atlas-compare --atlas $(ATLAS) --seconds $(BENCH_SECONDS) $(if $(ONLY),--only $(ONLY))

# Coverage-guided fuzzing of the parser, the config loader and the consensus envelope (libFuzzer via cargo-fuzz;
# RUSTC_BOOTSTRAP lets the stable toolchain accept the sanitizer flags). FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 60
fuzz: deps
	@command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run parse_request -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run config -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run envelope -- -max_total_time=$(FUZZ_SECONDS)

clean:
	cargo clean
