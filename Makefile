# Every target works on a fresh checkout; cargo fetches what it needs.
CARGO ?= cargo

.PHONY: build test lint crds crds-check

## build: compile the browserfleet binary
build:
	$(CARGO) build --locked

## test: run every test (unit, property, CRD drift, structural schema, examples)
test:
	$(CARGO) test --locked

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
