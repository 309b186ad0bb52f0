# The README's test command is `make test`: vet, every package's tests (each
# package binary bounded by -timeout), then the core packages and the
# fault-injection, HA and storm tests again under the race detector, then a
# short fuzzing run of the request and manifest decoders and a minute of
# random requests against every HTTP route (TestHTTPFuzz).
RACE_PKGS = ./client/ ./internal/store/ ./internal/events/ ./internal/controller/ ./internal/scheduler/ ./internal/node/ ./internal/registry/... ./internal/retry/ ./internal/testenv/... ./internal/driver/anka/ ./internal/driver/tart/ ./internal/driver/synthetic/ ./internal/fakecli/...
RACE_E2E  = TestPartitionedNodeNeverRunsAJobTwice|TestWorkLostWhileBootingIsPlacedAgain|TestLeaderKilled|TestHAKillOneOfEach|TestNodeKilledWithoutGoodbye|TestNodeRestartReconciles|TestTerminateBeforeNodeSawPlacement|TestNeverStartedWorkSurvivesNodeCrash|TestHungRegistryDoesNotStallScheduling|TestStorm|TestUpWithTart

# Every platform a node or server runs on; `make cross` builds and vets each.
TARGETS = darwin/arm64 darwin/amd64 linux/amd64 linux/arm64

.PHONY: build test race fuzz vet cross mutate
build:
	go build -o bin/corral ./cmd/corral
test: vet cross
	go test -timeout 15m ./...
	$(MAKE) race
	$(MAKE) fuzz
race:
	go test -race -timeout 15m $(RACE_PKGS)
	go test -race -timeout 15m -run '$(RACE_E2E)' ./internal/e2e/
# A short native-fuzzing run of the decoders (their seeds also run in `go test`),
# counted in executions, not seconds: a timed run sometimes ends in the fuzzer's
# own "context deadline exceeded" with no failing input (seen here, 1 of 3),
# then a minute of the HTTP fuzzer (5 s of it runs in `go test`).
fuzz:
	go test -timeout 5m -run '^$$' -fuzz '^FuzzStartRequest$$' -fuzztime 500000x ./api/v1/
	go test -timeout 5m -run '^$$' -fuzz '^FuzzManifestReferences$$' -fuzztime 300000x ./internal/registry/
	CORRAL_HTTP_FUZZ=60s go test -count=1 -timeout 5m -run '^TestHTTPFuzz$$' ./internal/e2e/
vet:
	go vet ./...
cross:
	@set -e; for t in $(TARGETS); do \
		echo "cross: $$t"; \
		GOOS=$${t%/*} GOARCH=$${t#*/} CGO_ENABLED=0 go build -o /dev/null ./cmd/corral; \
		GOOS=$${t%/*} GOARCH=$${t#*/} CGO_ENABLED=0 go vet ./...; \
	done

# Mutation testing of one package against its own tests (not part of `make
# test`: it takes minutes to hours). PKG is a directory; FILES a regexp of
# file names, SAMPLE a count of mutants picked at random (SEED), JOBS how
# many at once, MIN a score under which it fails.
PKG ?= ./internal/scheduler
mutate:
	CORRAL_MUTATE_PKG=$(PKG) CORRAL_MUTATE_FILES='$(FILES)' CORRAL_MUTATE_SAMPLE=$(SAMPLE) \
	CORRAL_MUTATE_SEED=$(SEED) CORRAL_MUTATE_JOBS=$(JOBS) CORRAL_MUTATE_MIN=$(MIN) \
		go test -v -count=1 -timeout 24h -run '^TestMutatePackage$$' ./internal/mutate/
