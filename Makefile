# mskflow: the two commands a newcomer needs are `make run` and `make test`.

CARGO   ?= cargo
PROFILE ?= dev
ARGS    ?=

.PHONY: run test build lint fmt bench schemas clean-data broker

## Build and start every service in one process on the embedded event store.
run:
	$(CARGO) run --profile $(PROFILE) --bin mskflow -- run $(ARGS)

## Run every test (formatting and lints first). Installs the Kafka-protocol
## broker the Kafka tests start (once, into ~/.cache/mskflow).
test: lint broker
	$(CARGO) test --workspace --all-targets --no-fail-fast
	$(CARGO) test --workspace --doc

## The Kafka-protocol broker used by the tests (nisshi, built from crates.io).
broker:
	scripts/kafka-broker.sh install

build:
	$(CARGO) build --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks print figures (release build).
bench:
	$(CARGO) bench -p mskflow-eventlog-sqlite
	$(CARGO) run --release --example load -- $(ARGS)

## Regenerate schemas/events/ and schemas/analytics/ from the Rust types.
schemas:
	$(CARGO) run -p mskflow-events --bin schemas
	$(CARGO) run -p mskflow-analytics --bin analytics-schema

## Remove the embedded store of `make run`.
clean-data:
	rm -rf .mskflow
