# sluice — the two commands a user needs are `make run` and `make test`.
GO      ?= go
BIN     := bin/sluice
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# grpcnotrace: the OTLP exporter's protobuf package links gRPC, whose
# golang.org/x/net/trace pulls in html/template and turns off the linker's
# dead-code elimination of methods: 60 MB instead of 41 MB. sluice uses no
# gRPC; a plain `go build` works too, only larger.
TAGS    := grpcnotrace

.PHONY: build run test test-short lint bench fuzz clean

build: ## build bin/sluice
	$(GO) build -tags "$(TAGS)" -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/sluice

run: build ## the demo slow log store and sluice in front of it (sluice.yaml), in one process
	@$(BIN) demo -config sluice.yaml

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: lint ## every test, integration tests included, with the race detector
	scripts/services.sh
	$(GO) test -race -count=1 -p 1 -timeout 13m ./...

test-short: ## unit tests only
	$(GO) test -short -count=1 ./...

bench: build ## benchmarks against baselines measured in the same run; fails when a goal is missed (BENCHFLAGS="-only ingest -json")
	$(GO) test -run '^$$' -bench . -benchtime 2s ./workers/ ./ingress/ ./auth/
	$(GO) run ./bench -sluice $(BIN) $(BENCHFLAGS)

fuzz: ## run each fuzz target for a while (FUZZTIME=30s)
	$(GO) test ./config/ -run '^$$' -fuzz FuzzParse -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./ingress/ -run '^$$' -fuzz 'FuzzHandle$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./ingress/ -run '^$$' -fuzz FuzzHandlePolicies -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./auth/ -run '^$$' -fuzz FuzzAuthenticate -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./results/internal/record/ -run '^$$' -fuzz FuzzDecode -fuzztime $${FUZZTIME:-30s}

clean:
	rm -rf bin data
