package agent

import (
	"context"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tabby-net/tabby/node/internal/nstest"
	"github.com/tabby-net/tabby/node/policy"
	"github.com/tabby-net/tabby/node/watch"
	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/model"
)

// policyAgent is a test agent whose cache follows an embedded etcd.
type policyAgent struct {
	*Agent
	t   *testing.T
	cli *clientv3.Client
	ctx context.Context
}

// withPolicyAgent runs f with a policy agent named h1 whose etcd holds
// profile P (allow all); its cache is not started. etcd and its client
// run in the test's own netns, the agent's kernel state in a fresh one.
func withPolicyAgent(t *testing.T, f func(p *policyAgent, e *etcdtest.Etcd)) {
	t.Helper()
	e := etcdtest.Start(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	nstest.Run(t, func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		a, _ := testAgent(t)
		a.cfg.Name = "h1"
		p := &policyAgent{Agent: a, t: t, cli: cli, ctx: ctx}
		p.put(model.ProfileKey("P"), model.Profile{Name: "P", Inbound: []model.Rule{{Action: "allow"}}, Outbound: []model.Rule{{Action: "allow"}}})
		f(p, e)
	})
}

func (p *policyAgent) put(key string, v any) {
	p.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.cli.Put(p.ctx, key, string(b)); err != nil {
		p.t.Fatal(err)
	}
}

// settle runs full policy passes as the cache changes until cond holds:
// every pass is woken by a change (a load, a watch event).
func (p *policyAgent) settle(what string, cond func() bool) {
	p.t.Helper()
	// A load that started while etcd was away ends with its 10 s timeout.
	deadline := time.After(30 * time.Second)
	for {
		if p.cache.Synced() {
			if _, err := p.syncPolicy(p.snapshot(), p.pass(false)); err != nil {
				p.t.Fatal(err)
			}
			if cond() {
				return
			}
		}
		select {
		case <-p.cache.Changed():
		case <-deadline:
			p.t.Fatalf("timed out waiting for %s (following %v)", what, p.cache.Prefixes())
		}
	}
}

// cached waits until the cache holds key (under prefix) at all.
func (p *policyAgent) cached(prefix, key string) {
	p.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if _, ok := p.cache.Get(prefix, key); ok {
			return
		}
		select {
		case <-p.cache.Changed():
		case <-deadline:
			p.t.Fatalf("timed out waiting for %s", key)
		}
	}
}

func ipsetSave(t *testing.T) string {
	out, err := exec.Command("ipset", "save").CombinedOutput()
	if err != nil {
		t.Fatalf("ipset save: %v: %s", err, out)
	}
	return string(out)
}

// setLines are the add lines of the sets with a name prefix.
func setLines(t *testing.T, prefix string) string {
	var out []string
	for _, l := range strings.Split(ipsetSave(t), "\n") {
		if strings.HasPrefix(l, "add "+prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// From etcd to the kernel: the node follows the member index only of the
// namespaces its local policies' peers resolve to, re-renders when
// members, namespaces or policies change, and keeps the incremental path
// for endpoints that need no policy change.
func TestPoliciesFromEtcd(t *testing.T) {
	withPolicyAgent(t, func(p *policyAgent, _ *etcdtest.Etcd) {
		a, cli, ctx := p.Agent, p.cli, p.ctx
		p.put(model.NamespaceKey("prod"), model.Namespace{Name: "prod", Labels: map[string]string{"team": "a"}})
		p.put(model.NamespaceKey("dev"), model.Namespace{Name: "dev", Labels: map[string]string{"team": "b"}})
		p.put(model.NamespaceKey("other"), model.Namespace{Name: "other"})
		ep := func(name string, ip string, labels map[string]string, ports []model.NamedPort) model.Endpoint {
			return model.Endpoint{Host: "h1", Orchestrator: "k8s", Workload: "prod." + name, Name: "eth0", ContainerID: "c-" + name,
				HostInterface: "tby" + (name + "00000000000")[:11], IPv4Nets: []string{ip + "/32"}, Profiles: []string{"P"},
				Namespace: "prod", Labels: labels, Ports: ports}
		}
		addEP := func(e model.Endpoint) {
			p.put(model.EndpointKey(e.Host, e.Orchestrator, e.Workload, e.Name), e)
			p.put(model.MemberKeyOf(&e), model.MemberOf(&e))
		}
		remote := func(ns, name, ip string) string {
			k := model.MemberKey(ns, "h2", "k8s", ns+"."+name, "eth0")
			p.put(k, model.Member{Endpoint: model.EndpointKey("h2", "k8s", ns+"."+name, "eth0"), Nets: []string{ip + "/32"}, Labels: map[string]string{"app": "client"}})
			return k
		}
		web := ep("web", "10.0.0.1", map[string]string{"app": "web"}, nil)
		addEP(web)
		remote("dev", "r2", "10.1.0.2")
		remote("other", "r3", "10.1.0.3")
		pol := model.Policy{Name: "allow", Namespace: "prod", Selector: "app=web", Types: []string{"ingress"},
			Ingress: []model.PolicyRule{{Peers: []model.Peer{{Selector: "app=client", NamespaceSelector: ptr("team=b")}}}}}
		p.put(model.PolicyKey("prod", "allow"), pol)

		a.cache = watch.New(cli, a.log)
		a.cache.Start(ctx, a.basePrefixes()...)
		p.settle("web ready", func() bool { return a.ready.has(web.HostInterface, web.ContainerID) })
		follows := func(pre string) bool { return slices.Contains(a.cache.Prefixes(), pre) }
		if !follows(model.MemberNamespacePrefix("dev")) || follows(model.MemberNamespacePrefix("other")) ||
			follows(model.MemberNamespacePrefix("prod")) || follows(model.MemberPrefix) {
			t.Fatalf("follows %v", a.cache.Prefixes())
		}
		if s := setLines(t, policy.PeerSetPrefix4); !strings.Contains(s, " 10.1.0.2") || strings.Contains(s, "10.1.0.3") {
			t.Fatalf("peer set:\n%s", s)
		}
		g := policy.GroupOfEndpoint(&web, policy.PreparePolicies([]model.Policy{pol}))
		if rules, err := a.ipt4.Rules("filter", "TABBY-QI-"+g); err != nil || len(rules) != 4 {
			t.Fatalf("policy stage %q %v", rules, err)
		}

		// A member of a followed namespace: a full pass (not a patch).
		k := remote("dev", "r5", "10.1.0.5")
		p.cached(model.MemberNamespacePrefix("dev"), k)
		if a.patchPolicy() {
			t.Fatal("a member change was patched")
		}
		p.settle("new member in the set", func() bool { return strings.Contains(setLines(t, policy.PeerSetPrefix4), " 10.1.0.5") })

		// A namespace's labels change: it is followed and its members match.
		p.put(model.NamespaceKey("other"), model.Namespace{Name: "other", Labels: map[string]string{"team": "b"}})
		p.settle("other's members in the set", func() bool {
			return follows(model.MemberNamespacePrefix("other")) && strings.Contains(setLines(t, policy.PeerSetPrefix4), " 10.1.0.3")
		})

		// A new endpoint of the existing isolated group, no named port, in a
		// namespace whose members are not followed: the incremental path.
		web2 := ep("web2", "10.0.0.2", map[string]string{"app": "web"}, nil)
		addEP(web2)
		p.cached(model.HostSubtree("h1"), model.EndpointKey("h1", "k8s", "prod.web2", "eth0"))
		if !a.patchPolicy() || !a.ready.has(web2.HostInterface, web2.ContainerID) {
			t.Fatal("the new endpoint of an existing group was not patched in")
		}
		if s := setLines(t, policy.GroupSetName(g, 4)); !strings.Contains(s, "10.0.0.2,"+web2.HostInterface) {
			t.Fatalf("group set:\n%s", s)
		}
		// With a named port, its group's named port sets change: full pass.
		web3 := ep("web3", "10.0.0.3", map[string]string{"app": "web"}, []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 80}})
		addEP(web3)
		p.cached(model.HostSubtree("h1"), model.EndpointKey("h1", "k8s", "prod.web3", "eth0"))
		if a.patchPolicy() || a.ready.has(web3.HostInterface, web3.ContainerID) {
			t.Fatal("an endpoint with named ports in an isolated group was patched in")
		}
		p.settle("web3 ready", func() bool { return a.ready.has(web3.HostInterface, web3.ContainerID) })

		// The policy goes: no policy stage, no member index followed, the
		// policy sets destroyed.
		if _, err := cli.Delete(ctx, model.PolicyKey("prod", "allow")); err != nil {
			t.Fatal(err)
		}
		p.settle("policy gone", func() bool {
			return !follows(model.MemberNamespacePrefix("dev")) && !strings.Contains(ipsetSave(t), "create "+policy.PeerSetPrefix4)
		})
		if rules, _ := a.ipt4.Rules("filter", "TABBY-QI-"+g); len(rules) != 0 {
			t.Fatalf("policy stage still there: %q", rules)
		}
	})
}

func ptr(s string) *string { return &s }

// An endpoint whose policy's peers are in a namespace the node does not
// follow yet is not reported ready until that namespace's members are
// loaded (here: etcd is down when the pass first needs them), and then it
// is, with the peer in its set.
func TestPolicyReadyWaitsForPeers(t *testing.T) {
	withPolicyAgent(t, func(p *policyAgent, e *etcdtest.Etcd) {
		a, cli, ctx := p.Agent, p.cli, p.ctx
		p.put(model.NamespaceKey("third"), model.Namespace{Name: "third", Labels: map[string]string{"kubernetes.io/metadata.name": "third"}})
		p.put(model.MemberKey("third", "h2", "k8s", "third.r", "eth0"), model.Member{Endpoint: "r", Nets: []string{"10.3.0.1/32"}, Labels: map[string]string{"app": "client"}})
		a.cache = watch.New(cli, a.log)
		a.cache.Start(ctx, a.basePrefixes()...)
		p.settle("first pass", func() bool { return true })

		db := model.Endpoint{Host: "h1", Orchestrator: "k8s", Workload: "prod.db", Name: "eth0", ContainerID: "c-db", HostInterface: "tbydb00000000",
			IPv4Nets: []string{"10.0.0.9/32"}, Profiles: []string{"P"}, Namespace: "prod", Labels: map[string]string{"app": "db"}}
		p.put(model.PolicyKey("prod", "db"), model.Policy{Name: "db", Namespace: "prod", Selector: "app=db", Types: []string{"ingress"},
			Ingress: []model.PolicyRule{{Peers: []model.Peer{{Selector: "app=client", NamespaceSelector: ptr("kubernetes.io/metadata.name=third")}}}}})
		epKey := model.EndpointKey(db.Host, db.Orchestrator, db.Workload, db.Name)
		p.put(epKey, db)
		p.cached(model.HostSubtree("h1"), epKey)
		p.cached(model.PolicyPrefix, model.PolicyKey("prod", "db"))
		e.Stop()
		if _, err := a.syncPolicy(a.snapshot(), a.pass(false)); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(a.cache.Prefixes(), model.MemberNamespacePrefix("third")) {
			t.Fatalf("follows %v", a.cache.Prefixes())
		}
		if a.ready.has(db.HostInterface, db.ContainerID) || a.patchPolicy() {
			t.Fatal("ready before the peers' namespace was loaded")
		}
		// etcd listens where the test started, not in this netns.
		restarted := make(chan struct{})
		go func() { e.Restart(t); close(restarted) }()
		<-restarted
		p.settle("db ready", func() bool { return a.ready.has(db.HostInterface, db.ContainerID) })
		if s := setLines(t, policy.PeerSetPrefix4); !strings.Contains(s, " 10.3.0.1") {
			t.Fatalf("peer set:\n%s", s)
		}
	})
}

// A node follows the profiles its endpoints name, one key each, and no
// other: an edit of another profile (even one whose name starts with a
// followed one's) reaches it not at all, an edit of its own re-renders,
// and a profile is followed from its first endpoint to its last.
func TestFollowsOnlyItsProfiles(t *testing.T) {
	withPolicyAgent(t, func(p *policyAgent, _ *etcdtest.Etcd) {
		a := p.Agent
		allow := []model.Rule{{Action: "allow"}}
		p.put(model.ProfileKey("PX"), model.Profile{Name: "PX", Inbound: allow, Outbound: allow})
		p.put(model.ProfileKey("Q"), model.Profile{Name: "Q", Inbound: allow, Outbound: allow})
		ep := func(name, ip, profile string) model.Endpoint {
			return model.Endpoint{Host: "h1", Orchestrator: "k8s", Workload: "prod." + name, Name: "eth0", ContainerID: "c-" + name,
				HostInterface: "tby" + (name + "00000000000")[:11], IPv4Nets: []string{ip + "/32"}, Profiles: []string{profile}}
		}
		add := func(e model.Endpoint) string {
			k := model.EndpointKey(e.Host, e.Orchestrator, e.Workload, e.Name)
			p.put(k, e)
			return k
		}
		e1 := ep("one", "10.0.0.1", "P")
		add(e1)
		a.cache = watch.New(p.cli, a.log)
		a.cache.Start(p.ctx, a.basePrefixes()...)
		p.settle("one ready", func() bool { return a.ready.has(e1.HostInterface, e1.ContainerID) })
		follows := func(pre string) bool { return slices.Contains(a.cache.Prefixes(), pre) }
		if !follows(model.ProfileKey("P")) || follows(model.ProfileKey("Q")) || follows(model.ProfileKey("PX")) || follows(model.ProfilePrefix) {
			t.Fatalf("follows %v", a.cache.Prefixes())
		}
		if s := a.cache.Snapshot(model.ProfileKey("P")); len(s) != 1 {
			t.Fatalf("profile P's key holds %d keys", len(s))
		}

		// Others' profiles change; then a new endpoint of the same group:
		// nothing the rules came from changed, so it is patched in.
		p.put(model.ProfileKey("Q"), model.Profile{Name: "Q", Inbound: []model.Rule{{Action: "deny"}}})
		p.put(model.ProfileKey("PX"), model.Profile{Name: "PX", Inbound: []model.Rule{{Action: "deny"}}})
		e2 := ep("two", "10.0.0.2", "P")
		p.cached(model.HostSubtree("h1"), add(e2))
		if !a.patchPolicy() || !a.ready.has(e2.HostInterface, e2.ContainerID) {
			t.Fatal("an edit of profiles no endpoint here names stopped the incremental path")
		}

		// Its own profile's edit: a full pass, whose tags are then followed.
		p.put(model.ProfileKey("P"), model.Profile{Name: "P", Inbound: []model.Rule{{Action: "allow", SrcTag: "T"}}, Outbound: allow})
		deadline := time.Now().Add(10 * time.Second)
		for v, _ := a.cache.Get(model.ProfileKey("P"), model.ProfileKey("P")); !strings.Contains(string(v), `"T"`); v, _ = a.cache.Get(model.ProfileKey("P"), model.ProfileKey("P")) {
			if time.Now().After(deadline) {
				t.Fatal("P's edit never reached the cache")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if a.patchPolicy() {
			t.Fatal("an edit of a profile in use was patched")
		}
		p.settle("tag T followed", func() bool { return follows(model.TagMembersPrefix("T")) && a.cache.Synced() })

		// The first endpoint naming Q: Q followed, the endpoint ready; its
		// last gone: Q no longer followed.
		e3 := ep("three", "10.0.0.3", "Q")
		k3 := add(e3)
		p.cached(model.HostSubtree("h1"), k3)
		if a.patchPolicy() {
			t.Fatal("an endpoint of a profile not yet followed was patched in")
		}
		p.settle("three ready under Q", func() bool { return follows(model.ProfileKey("Q")) && a.ready.has(e3.HostInterface, e3.ContainerID) })
		if _, err := p.cli.Delete(p.ctx, k3); err != nil {
			t.Fatal(err)
		}
		p.settle("Q dropped", func() bool { return !follows(model.ProfileKey("Q")) })
	})
}

// A restarted daemon starts with a cache that follows only the base
// prefixes: its endpoints' profiles and their tags load over its first
// passes. No pass may apply a render that lacks them (the kernel's tag set
// emptied for ~50 ms after a restart, dropping new connections between
// running workloads), and the node is not ready until one that has them
// is in force.
func TestRestartKeepsRulesUntilLoaded(t *testing.T) {
	withPolicyAgent(t, func(p *policyAgent, _ *etcdtest.Etcd) {
		allow := []model.Rule{{Action: "allow"}}
		p.put(model.ProfileKey("P"), model.Profile{Name: "P", Inbound: []model.Rule{{Action: "allow", SrcTag: "T"}}, Outbound: allow})
		e1 := model.Endpoint{Host: "h1", Orchestrator: "k8s", Workload: "prod.one", Name: "eth0", ContainerID: "c-one",
			HostInterface: "tbyone0000000", IPv4Nets: []string{"10.0.0.1/32"}, Profiles: []string{"P"}}
		p.put(model.EndpointKey(e1.Host, e1.Orchestrator, e1.Workload, e1.Name), e1)
		p.put(model.TagMemberKey("T", "h2", "k8s", "prod.peer", "eth0"), model.TagMember{Endpoint: "peer", Nets: []string{"10.9.0.1/32"}})
		hasPeer := func() bool { return strings.Contains(setLines(t, "tabby-t4-"), " 10.9.0.1") }

		first := p.Agent
		first.cache = watch.New(p.cli, first.log)
		first.cache.Start(p.ctx, first.basePrefixes()...)
		p.settle("first daemon ready", func() bool { return first.ready.has(e1.HostInterface, e1.ContainerID) })
		if !hasPeer() {
			t.Fatalf("the tag's set lacks its member:\n%s", ipsetSave(t))
		}

		// The restart: a new daemon, same kernel.
		ctx, stop := context.WithCancel(p.ctx)
		defer stop()
		second, _ := testAgent(t)
		second.cfg.Name = "h1"
		second.cache = watch.New(p.cli, second.log)
		second.cache.Start(ctx, second.basePrefixes()...)
		p.Agent = second
		passes, incomplete := 0, 0
		p.settle("second daemon ready", func() bool {
			passes++
			if !hasPeer() {
				t.Fatalf("pass %d of the restarted daemon took the tag's member out of the kernel", passes)
			}
			done := second.ready.has(e1.HostInterface, e1.ContainerID)
			if !done {
				incomplete++
			}
			return done
		})
		if incomplete == 0 {
			t.Fatal("the restarted daemon's first pass already had the profile and tag loaded: the test shows nothing")
		}
		t.Logf("ready after %d passes, %d of them before the profile and tag were loaded", passes, incomplete)
	})
}
