.PHONY: build test bench fuzz run vet

build:
	go build -o bin/quell ./cmd/quell

run:
	go run ./cmd/quell serve --playbooks examples/playbooks

test:
	bash scripts/test.sh

vet:
	go vet ./...

# Benchmarks print their figures (events/s, p50/p99); see docs/performance.md.
bench:
	go test -run '^$$' -bench . -benchtime 1x ./internal/app/
	go test -run '^$$' -bench . ./internal/source/... ./internal/policy/ ./internal/enrich/... ./internal/playbook/

fuzz:
	QUELL_FUZZTIME=60s bash scripts/test.sh
