# urna — the two commands a newcomer needs are `make up` and `make test`.
# Everything else here is what those two are made of.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
MODULE_DIR := target/$(WASM_TARGET)/wasm
SAMPLE_VOTES := locust/data/sample-votes.jsonl
# cargo-machete (unused dependencies), installed by scripts/bootstrap.sh
MACHETE := .cache/cargo-tools/bin/cargo-machete

.PHONY: up down test e2e chaos bootstrap modules go-ballot build lint fmt stack-up stack-down stack-status clean demo-module bench compare images push chart-check

## up: install what is missing, build, start the stack and every service, run Locust
##     against both producers, check the counts, show where to look; Ctrl-C stops it all
##     (LOAD_SECONDS=60 LOAD_RATE=100 per producer, LOCUST_UI=1, DETACH=1)
up: bootstrap modules demo-module
	scripts/pipeline.sh up

## down: stop the services and the stack
down:
	scripts/pipeline.sh down

## test: install what is missing, then every test against the real local stack
test: bootstrap lint modules
	scripts/test.sh

## e2e: the end-to-end suite alone (exact counts under faults, hostile input, fuzzing);
##      one scenario: scripts/e2e.sh -k kafka
e2e: bootstrap modules
	scripts/e2e.sh

## chaos: the nemesis alone for longer (e2e/test_nemesis.py): a seeded random schedule of
##        faults while keyed votes flow, then the exact check; replay a run by its seed:
##        make chaos SEED=1234 MINUTES=5
SEED ?= $(shell date +%s)
MINUTES ?= 5
chaos: bootstrap modules
	URNA_CHAOS_SEED=$(SEED) URNA_CHAOS_SECONDS=$$(( $(MINUTES) * 60 )) scripts/e2e.sh -k nemesis -s

bootstrap:
	scripts/bootstrap.sh

## modules: the vote modules for wasm32-wasip1 (vote.wasm command, vote_module.wasm reactor,
##          vote_go.wasm: the same ABI in Go, against the ballot the Rust crate writes out)
modules: go-ballot
	$(CARGO) build -p vote-module --target $(WASM_TARGET) --profile wasm
	cd wasm-modules/vote-go && GOOS=wasip1 GOARCH=wasm go build -trimpath -buildmode=c-shared \
	  -o ../../$(MODULE_DIR)/vote_go.wasm .
	@ls -l $(MODULE_DIR)/vote.wasm $(MODULE_DIR)/vote_module.wasm $(MODULE_DIR)/vote_go.wasm

build:
	$(CARGO) build --workspace

# The Go module's ballot, written by the Rust crate (ignored by git: never stale).
go-ballot:
	$(CARGO) run -q -p urna-vote --example ballot_go > wasm-modules/vote-go/ballot_gen.go

## lint: formatting, clippy -D warnings, no unused dependencies (cargo machete); gofmt and
##       go vet for the Go module
lint: go-ballot
	@test -x $(MACHETE) || scripts/bootstrap.sh
	$(MACHETE) --skip-target-dir
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	test -z "$$(gofmt -l wasm-modules/vote-go)" || { gofmt -l wasm-modules/vote-go; exit 1; }
	cd wasm-modules/vote-go && GOOS=wasip1 GOARCH=wasm go vet .
	$(CARGO) clippy -p vote-module --target $(WASM_TARGET) -- -D warnings

fmt:
	$(CARGO) fmt --all

demo-module:
	@echo "== vote.wasm on $(SAMPLE_VOTES) (node:wasi) =="
	node --no-warnings wasm-modules/tools/run-node-wasi.mjs $(MODULE_DIR)/vote.wasm < $(SAMPLE_VOTES)

stack-up:
	stack/up.sh

stack-down:
	stack/down.sh

stack-status:
	stack/status.sh

## bench: urna against this machine's limits (HTTP ceiling, Kafka's perf test, each sink's
##        ceiling, the native call), each measured in the same run; writes docs/benchmarks.md.
##        A part: make bench BENCH_ARGS='--only http,e2e --repeats 1'; beside an earlier
##        commit's binaries: make bench BENCH_BEFORE=9c56b00
bench: bootstrap
	BENCH_BEFORE=$(BENCH_BEFORE) scripts/bench.sh $(BENCH_ARGS)

## images: build every service's image as docker.io/$(DOCKERHUB_NAMESPACE)/<name>:$(IMAGE_TAG)
##         with docker or podman (scripts/images.sh; the chart's global.image.* values)
images:
	scripts/images.sh build

## push: build, then push the images to Docker Hub (`docker login` first)
push: images
	scripts/images.sh push

## chart-check: only the Helm chart's checks (lint, schemas, rendered facts, dashboard vs
##              consumer; the last needs the stack and the debug binaries)
chart-check: bootstrap
	python3 -m pip install -q --disable-pip-version-check -r charts/tests/requirements.txt
	python3 -m pytest charts/tests -q

## compare: the gRPC-vs-Wasm timing experiment (Locust, wrk) on the running pipeline
##          (`make up` first); writes docs/timing-report.md, its plots and the Locust HTML
##          report. Longer run: URNA_COMPARE_ARGS='--repeats 5 --duration 30' make compare
compare:
	scripts/compare.sh

## clean: stop the stack and remove its data (caches in .cache/ stay; `rm -rf .cache` for those)
clean:
	-scripts/pipeline.sh down
	rm -rf .stack
