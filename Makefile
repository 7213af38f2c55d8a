# mskflow: the two commands a newcomer needs are `make run` and `make test`.

CARGO   ?= cargo
PROFILE ?= dev
ARGS    ?=

.PHONY: run test build lint fmt bench bench-kafka schemas clean-data broker browser deny fuzz

## Build and start every service in one process on the embedded event store.
run:
	$(CARGO) run --profile $(PROFILE) --bin mskflow -- run $(ARGS)

## Run every test (formatting, lints and the dependency policy first).
## Installs the Kafka-protocol broker the Kafka tests start and cargo-deny
## (once, into ~/.cache/mskflow).
test: lint deny broker browser
	$(CARGO) test --workspace --all-targets --no-fail-fast
	$(CARGO) test --workspace --doc

## Every fuzz target for FUZZ_SECONDS each (cargo-fuzz is installed once
## into ~/.cache/mskflow/tools); a crash fails the run. FUZZ_FLAGS are
## passed to cargo fuzz (e.g. "--dev --sanitizer none": a 5-minute build
## instead of the release + AddressSanitizer one).
FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

## The Kafka-protocol broker used by the tests (nisshi, built from crates.io).
broker:
	scripts/kafka-broker.sh install

## The headless browser the dashboard and self-referral tests drive
## (chromium-headless-shell from Debian; MSKFLOW_BROWSER overrides), and
## axe-core (npm, into ~/.cache/mskflow/axe-core; MSKFLOW_AXE overrides),
## the accessibility checker the self-referral test runs in each page.
browser:
	scripts/headless-browser.sh install
	scripts/axe-core.sh install

## Dependency policy (deny.toml): licences, bans, sources; advisories when
## the RustSec database is reachable.
deny:
	scripts/cargo-deny.sh check

build:
	$(CARGO) build --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks print figures (release build) and write target/bench/REPORT.md.
## BENCH_REFERRALS sets the size of the long run (memory and replay).
BENCH_TARGET    ?= $(or $(CARGO_TARGET_DIR),target)
BENCH_OUT       ?= target/bench
BENCH_REFERRALS ?= 100000
bench:
	mkdir -p $(BENCH_OUT)
	$(CARGO) build --release --bin mskflow
	MSKFLOW_BENCH_JSON=$(abspath $(BENCH_OUT))/append.json \
	  $(CARGO) bench --workspace --bench parse --bench triage --bench envelope --bench replay --bench append \
	  -- --warm-up-time 1 --measurement-time 3
	$(BENCH_TARGET)/release/mskflow load --referrals 20000 --concurrency 32 --json $(BENCH_OUT)/load-max.json
	$(BENCH_TARGET)/release/mskflow load --rate 1000/s --duration 20 --concurrency 128 --end-to-end --json $(BENCH_OUT)/load-rate.json
	$(BENCH_TARGET)/release/mskflow load --referrals $(BENCH_REFERRALS) --concurrency 32 --replay --json $(BENCH_OUT)/load-100k.json
	scripts/bench-report.sh $(BENCH_OUT) $(BENCH_TARGET)/criterion > $(BENCH_OUT)/REPORT.md
	cat $(BENCH_OUT)/REPORT.md

## The Kafka deployment against the broker's own ceiling, in one run
## (scripts/kafka-load.sh, release build): the ceiling with a plain client,
## mskflow end to end at each of KAFKA_SIZES referrals, the fraction, and
## two gateway, intake and assessment instances against one (KAFKA_SCALE
## referrals; 0 skips it). About 3 minutes once built.
KAFKA_SIZES ?= 1000 5000 20000
KAFKA_SCALE ?= 5000
bench-kafka:
	SCALE_SIZE=$(KAFKA_SCALE) scripts/kafka-load.sh $(KAFKA_SIZES)

## Regenerate schemas/events/ and schemas/analytics/ from the Rust types.
schemas:
	$(CARGO) run -p mskflow-events --bin schemas
	$(CARGO) run -p mskflow-analytics --bin analytics-schema

## Remove the embedded store of `make run`.
clean-data:
	rm -rf .mskflow
