# tabby — build, test, demo, bench. Run as root (namespaces, iptables).
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.Version=$(VERSION)
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)'
CNITOOL_VERSION := v1.3.1
CRICTL_VERSION := v1.34.0
export PATH := $(BIN):$(BIN)/tools:$(PATH)

# command -> Debian package; installed only when the command is missing.
SYSDEPS := iptables:iptables ipset:ipset ip:iproute2 ping:iputils-ping nc:netcat-openbsd \
           conntrack:conntrack /usr/lib/cni/ptp:containernetworking-plugins birdc:bird2 iperf3:iperf3 \
           nsenter:util-linux containerd:containerd runc:runc dockerd:docker.io busybox:busybox-static \
           curl:curl /usr/bin/nc.openbsd:netcat-openbsd

.PHONY: all build deps tools test test-unit test-e2e test-runtime demo bench install clean fuzz docs

all: build

build:
	@mkdir -p $(BIN)
	$(GOBUILD) -o $(BIN)/tabby ./cni-plugin
	$(GOBUILD) -o $(BIN)/tabby-ipam ./ipam-plugin
	$(GOBUILD) -o $(BIN)/tabby-node ./node
	$(GOBUILD) -o $(BIN)/tabbyctl ./tabbyctl
	$(GOBUILD) -o $(BIN)/tabby-docker ./docker
	$(GOBUILD) -o $(BIN)/tabby-kube-controllers ./kube-controllers
	$(GOBUILD) -o $(BIN)/etcd-lab ./test/etcd-lab

deps:
	@missing=""; for d in $(SYSDEPS); do c=$${d%%:*}; p=$${d##*:}; \
	  if ! command -v $$c >/dev/null 2>&1 && [ ! -e $$c ]; then missing="$$missing $$p"; fi; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  guard=; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
	    chmod +x /usr/sbin/policy-rc.d; guard=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; rc=$$?; \
	  [ -z "$$guard" ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; fi

tools:
	@mkdir -p $(BIN)/tools
	@[ -x $(BIN)/tools/cnitool ] || GOBIN=$(BIN)/tools CGO_ENABLED=0 $(GO) install github.com/containernetworking/cni/cnitool@$(CNITOOL_VERSION)
	@[ -x $(BIN)/tools/crictl ] || GOBIN=$(BIN)/tools CGO_ENABLED=0 GOFLAGS=-buildvcs=false $(GO) install \
	  -ldflags '-X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRICTL_VERSION)' sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)

test: deps build tools tidy-check
	$(GO) vet ./...
	TABBY_BIN=$(BIN) TABBY_BIN_DIR=$(BIN) TABBY_REQUIRE_TOOLS=1 $(GO) test -p 1 -count=1 -timeout 40m $$($(GO) list ./... | grep -v -e /test/runtime$$ -e /test/k8s)
	@echo "--- fuzzing, ~5 s a target (a count of runs each: see fuzz)"
	$(MAKE) --no-print-directory fuzz FUZZTIME=count
	@echo "--- containerd CRI and Docker (test/runtime, run times per phase)"
	$(RUNTIME_TEST)
	@echo "--- the Kubernetes cluster lab (test/k8s: tabby deployed by its manifest, upstream e2e suites)"
	$(MAKE) --no-print-directory k8s-bins
	$(K8S_TEST)
	@echo "--- make demo (the seed scenario, as a user runs it)"
	TABBY_BIN=$(BIN) TABBY_BIN_DIR=$(BIN) $(GO) run ./test/demo

# Real runtimes (containerd CRI + crictl, Docker + tabby-docker) in the lab, verbose
# so that every phase's run time shows.
RUNTIME_TEST = TABBY_BIN=$(BIN) TABBY_BIN_DIR=$(BIN) TABBY_REQUIRE_TOOLS=1 $(GO) test -count=1 -v -timeout 10m ./test/runtime/

test-runtime: deps build tools
	$(RUNTIME_TEST)

# The Kubernetes cluster lab (test/k8s): real kube-apiserver, controller
# manager, scheduler, kubelets, kube-proxy and containerd in the lab, tabby
# deployed with kubectl apply of conf/k8s/tabby.yaml; then the upstream
# networking suites (e2e.test). k8s-bins builds the Kubernetes binaries from
# the Go module proxy once (test/k8s/build, ~12 min cold on 2 cores) and
# keeps them in $(K8S_BIN_DIR).
K8S_BIN_DIR ?= /var/cache/tabby-k8s/v1.37.2
export K8S_BIN_DIR
K8S_TEST = TABBY_BIN=$(BIN) TABBY_BIN_DIR=$(BIN) TABBY_REQUIRE_TOOLS=1 $(GO) test -p 1 -count=1 -v -timeout 45m ./test/k8s/...

.PHONY: k8s-bins test-k8s
k8s-bins:
	test/k8s/build/build.sh $(K8S_BIN_DIR)

test-k8s: deps build tools k8s-bins
	$(K8S_TEST)

# go.mod and go.sum must be what `go mod tidy` makes of the code.
.PHONY: tidy-check
tidy-check:
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run 'go mod tidy'"; exit 1; }

test-unit: build
	TABBY_BIN=$(BIN) $(GO) test -count=1 -short ./pkg/...

# IPIP for real: boots Debian's kernel (which has ipip) in a throwaway qemu VM
# with ../shared/tools/ipip-vm/run.sh and runs the IPIP lab tests there
# (test/ipipvm); says SKIPPED where the tool is missing. 1.5-5 min under TCG.
.PHONY: test-ipip
test-ipip:
	$(GO) test -count=1 -v -timeout 15m ./test/ipipvm/

# Fuzzing what parses untrusted input: netconf and CNI_ARGS, etcd's wire
# answers, label selectors, tabbyctl's arguments and policy files,
# tabby-docker's plugin API (in a network namespace of its own: nothing it
# could do may touch this host's interfaces). make test runs each for
# FUZZTIME=count: the number of runs after each target (about 5 s of this
# machine's rate), not a duration, because Go's fuzz coordinator (1.26 and
# older, go.dev/issue/75804) can end a duration with "context deadline
# exceeded" and no crasher on a loaded machine. The corpora that found new
# paths are kept in each package's testdata/fuzz and run as seeds by
# every go test.
FUZZTIME ?= 30s
FUZZ_TARGETS = ./pkg/netconf/:FuzzParse:100000 ./pkg/store/:FuzzDecodeTxn:20000 ./pkg/selector/:FuzzParse:200000 \
	./tabbyctl/:FuzzParseArgs:4000 ./tabbyctl/:FuzzDecodePolicies:5000 ./docker/:FuzzHandler:1500
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; rest=$${t#*:}; fn=$${rest%%:*}; budget=$(FUZZTIME); \
	  [ "$$budget" = count ] && budget=$${rest#*:}x; echo "fuzz $$fn in $$pkg for $$budget"; \
	  unshare -n sh -c 'ip link set lo up && exec "$$@"' sh $(GO) test -run XXX -fuzz "^$$fn$$" -fuzztime $$budget $$pkg; done

demo: deps build tools
	TABBY_BIN=$(BIN) TABBY_BIN_DIR=$(BIN) $(GO) run ./test/demo

bench: deps build tools k8s-bins
	TABBY_BIN=$(BIN) TABBY_BIN_DIR=$(BIN) $(GO) run ./test/bench -out bench/out
	@echo "--- the cluster row: a 30-pod Deployment, tabby vs ptp + host-local (test/k8s)"
	TABBY_BIN=$(BIN) TABBY_BIN_DIR=$(BIN) TABBY_K8S_BENCH_OUT=$(CURDIR)/bench/out/k8s-table.md \
	  $(GO) test -count=1 -v -timeout 30m -run TestBenchPodStartup ./test/k8s/

# The README's performance table is bench/out/readme-table.md of the last
# make bench (one run, one verdict per goal): this splices it into README.md
# between its bench-table markers.
.PHONY: bench-readme
bench-readme:
	@[ -f bench/out/readme-table.md ] || { echo "bench/out/readme-table.md is missing: run make bench first" >&2; exit 1; }
	@grep -q '<!-- bench-table:begin -->' README.md && grep -q '<!-- bench-table:end -->' README.md || { echo "README.md has no bench-table markers" >&2; exit 1; }
	@awk 'BEGIN{skip=0} /<!-- bench-table:begin -->/{print; while((getline l < "bench/out/readme-table.md")>0) print l; skip=1; next} /<!-- bench-table:end -->/{skip=0} !skip{print}' README.md > README.md.new && mv README.md.new README.md
	@if [ -f bench/out/k8s-table.md ]; then awk 'BEGIN{skip=0} /<!-- bench-k8s:begin -->/{print; while((getline l < "bench/out/k8s-table.md")>0) print l; skip=1; next} /<!-- bench-k8s:end -->/{skip=0} !skip{print}' README.md > README.md.new && mv README.md.new README.md; fi
	@if [ -f bench/out/runs-table.md ]; then awk 'BEGIN{skip=0} /<!-- bench-runs:begin -->/{print; while((getline l < "bench/out/runs-table.md")>0) print l; skip=1; next} /<!-- bench-runs:end -->/{skip=0} !skip{print}' README.md > README.md.new && mv README.md.new README.md; fi

install: build
	install -d /opt/cni/bin /etc/cni/net.d /usr/local/bin
	install -m 0755 $(BIN)/tabby $(BIN)/tabby-ipam /opt/cni/bin/
	install -m 0755 $(BIN)/tabby-node $(BIN)/tabbyctl /usr/local/bin/
	[ -e /etc/cni/net.d/10-tabby.conflist ] || install -m 0644 conf/10-tabby.conflist /etc/cni/net.d/

clean:
	rm -rf $(BIN) bench/out

docs:
	@TABBY_UPDATE_DOCS=1 $(GO) test -count=1 -run TestREADMECodesAreCurrent ./pkg/cnierr >/dev/null
	@$(GO) run ./tabbyctl help --markdown > /tmp/tabbyctl-ref.md
	@awk 'BEGIN{skip=0} /<!-- tabbyctl-reference:begin -->/{print; while((getline l < "/tmp/tabbyctl-ref.md")>0) print l; skip=1; next} /<!-- tabbyctl-reference:end -->/{skip=0} !skip{print}' README.md > README.md.new && mv README.md.new README.md

# The systemd unit for tabby-node and its environment file (an existing
# /etc/tabby/tabby-node.env is kept). Then: systemctl enable --now tabby-node
.PHONY: install-systemd
install-systemd: install
	install -d /etc/systemd/system /etc/tabby
	install -m 0644 conf/systemd/tabby-node.service /etc/systemd/system/
	[ -e /etc/tabby/tabby-node.env ] || install -m 0644 conf/systemd/tabby-node.env /etc/tabby/
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# The route reflector lab: 100 tabby-nodes, mesh off, 2 reflectors
# (test/rrlab); figures in bench/out/rr.json and bench/out/rr.md.
.PHONY: bench-rr
bench-rr: build
	TABBY_RR_HOSTS=$${TABBY_RR_HOSTS:-100} TABBY_RR_OUT=$(CURDIR)/bench/out/rr.json TABBY_BIN=$(CURDIR)/bin \
		$(GO) test -count=1 -v -timeout 30m -run TestRouteReflectorLab ./test/rrlab/

# The scale simulation (test/scale, docs/scale.md): etcd filled as 10,000
# hosts with 1,000,000 workloads, their watches opened by simulated nodes
# with and without etcd's gRPC proxy, and a real tabby-node's cold start,
# ADD and profile enforcement on that datastore. Report in bench/out/scale.
.PHONY: bench-scale
bench-scale: deps build
	TABBY_BIN=$(BIN) TABBY_BIN_DIR=$(BIN) $(GO) run ./test/scale -out bench/out/scale
	@echo "--- the route reflector lab (100 real hosts, make bench-rr)"
	$(MAKE) --no-print-directory bench-rr
