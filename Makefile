# Every target works on a fresh checkout: cargo fetches the crates, and
# scripts/install-moto.sh installs moto into .venv/ for the targets that need it.
CARGO ?= cargo

.PHONY: build test lint crds crds-check moto bench-observe

## build: compile the browserfleet binary
build:
	$(CARGO) build --locked

## test: run every test (unit, property, CRD drift, structural schema, examples,
##       the cloud layer against moto); installs moto into .venv/ when missing
test: moto
	$(CARGO) test --locked

## moto: install moto[server] into .venv/ when it is missing (idempotent)
moto:
	bash scripts/install-moto.sh

## bench-observe: AWS calls per fleet observation for 10, 100, 1000 instances (moto)
bench-observe: moto
	$(CARGO) run --locked --quiet --example observe_fleet

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## crds: regenerate crds/ from the Rust types in src/api/
crds:
	$(CARGO) run --locked --quiet -- crdgen --out-dir crds

## crds-check: fail when crds/ differs from the Rust types
crds-check:
	$(CARGO) run --locked --quiet -- crdgen --out-dir crds --check
