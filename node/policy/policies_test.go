package policy

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/node/internal/nstest"
	"github.com/tabby-net/tabby/node/iptables"
	"github.com/tabby-net/tabby/pkg/model"
)

func ptr(s string) *string { return &s }

// policySample: three namespaces; local endpoints web1, web2 (prod,
// app=web, named port http on different numbers), db (prod, app=db), free
// (dev, app=web: prod's policies do not select it), noprof (prod, app=web,
// no profile); remote clients in prod, dev and other.
func policySample() Input {
	prof := model.DefaultProfile("P")
	prof.Inbound = []model.Rule{{Action: "deny", Protocol: "tcp", DstPorts: "666"}, {Action: "allow"}}
	return Input{
		Endpoints: []model.Endpoint{
			{HostInterface: "tby00000000001", ContainerID: "c1", Namespace: "prod", Labels: map[string]string{"app": "web"}, IPv4Nets: []string{"10.0.0.1/32"}, IPv6Nets: []string{"fd00::1/128"},
				Profiles: []string{"P"}, Ports: []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 8080}}},
			{HostInterface: "tby00000000002", ContainerID: "c2", Namespace: "prod", Labels: map[string]string{"app": "web"}, IPv4Nets: []string{"10.0.0.2/32"},
				Profiles: []string{"P"}, Ports: []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 8081}}},
			{HostInterface: "tby00000000003", ContainerID: "c3", Namespace: "prod", Labels: map[string]string{"app": "db"}, IPv4Nets: []string{"10.0.0.3/32"}, Profiles: []string{"P"}},
			{HostInterface: "tby00000000004", ContainerID: "c4", Namespace: "dev", Labels: map[string]string{"app": "web"}, IPv4Nets: []string{"10.0.0.4/32"}, Profiles: []string{"P"}},
			{HostInterface: "tby00000000005", ContainerID: "c5", Namespace: "prod", Labels: map[string]string{"app": "web"}, IPv4Nets: []string{"10.0.0.5/32"}},
		},
		Profiles: map[string]model.Profile{"P": prof},
		Tags:     map[string][]string{},
		Namespaces: map[string]model.Namespace{
			"prod":  {Name: "prod", Labels: map[string]string{"team": "a", "kubernetes.io/metadata.name": "prod"}},
			"dev":   {Name: "dev", Labels: map[string]string{"team": "b", "kubernetes.io/metadata.name": "dev"}},
			"other": {Name: "other", Labels: map[string]string{"kubernetes.io/metadata.name": "other"}},
		},
		Members: map[string][]model.Member{
			"prod": {
				{Endpoint: "e1", Nets: []string{"10.0.0.1/32", "fd00::1/128"}, Labels: map[string]string{"app": "web"}, Ports: []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 8080}}},
				{Endpoint: "e2", Nets: []string{"10.0.0.2/32"}, Labels: map[string]string{"app": "web"}, Ports: []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 8081}}},
				{Endpoint: "e3", Nets: []string{"10.0.0.3/32"}, Labels: map[string]string{"app": "db"}},
				{Endpoint: "r1", Nets: []string{"10.1.0.1/32", "fd00:1::1/128"}, Labels: map[string]string{"app": "client"}},
			},
			"dev":   {{Endpoint: "r2", Nets: []string{"10.1.0.2/32"}, Labels: map[string]string{"app": "client"}, Ports: []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 80}}}},
			"other": {{Endpoint: "r3", Nets: []string{"10.1.0.3/32"}, Labels: map[string]string{"app": "client"}}},
		},
		Policies: []model.Policy{
			{Name: "allow-web", Namespace: "prod", Selector: "app=web", Types: []string{"ingress"}, Ingress: []model.PolicyRule{
				{Ports: []model.PolicyPort{{Protocol: "tcp", Name: "http"}}, Peers: []model.Peer{{Selector: "app=client"}}},
				{Ports: []model.PolicyPort{{Protocol: "sctp", Port: 9000}}, Peers: []model.Peer{{Selector: "app=client", NamespaceSelector: ptr("team=b")}}},
				{Ports: []model.PolicyPort{{Protocol: "tcp", Port: 1000, EndPort: 2000}, {Protocol: "tcp", Port: 80}, {Protocol: "udp", Port: 53}},
					Peers: []model.Peer{{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}, {CIDR: "fd00:99::/64"}}},
			}},
			{Name: "web-egress", Namespace: "prod", Selector: "app=web", Types: []string{"egress"}, Egress: []model.PolicyRule{
				{Action: "deny", Peers: []model.Peer{{CIDR: "10.9.0.0/16"}}},
				{Ports: []model.PolicyPort{{Protocol: "tcp", Name: "http"}}, Peers: []model.Peer{{NamespaceSelector: ptr("")}}},
			}},
			{Name: "db-ping", Selector: "app=db", Order: -1, Types: []string{"ingress"}, Ingress: []model.PolicyRule{{Protocol: "icmp"}}},
			{Name: "unrelated", Namespace: "other", Selector: "", Types: []string{"ingress", "egress"}},
		},
	}
}

func chainsOf(t iptables.Table) map[string][]string {
	out := map[string][]string{}
	for _, c := range t.Chains {
		out[c.Name] = c.Rules
	}
	return out
}

func setsOf(o Output) map[string]iptables.Set {
	out := map[string]iptables.Set{}
	for _, s := range o.Sets {
		out[s.Name] = s
	}
	return out
}

func groupOf(in Input, i int) string {
	return GroupOfEndpoint(&in.Endpoints[i], PreparePolicies(in.Policies))
}

func TestPolicyGroupsAndComposition(t *testing.T) {
	in := policySample()
	out := Render(in)
	c4 := chainsOf(out.Filter4)
	web, db, free, noprof := groupOf(in, 0), groupOf(in, 2), groupOf(in, 3), groupOf(in, 4)
	if groupOf(in, 1) != web || len(map[string]bool{web: true, db: true, free: true, noprof: true}) != 4 {
		t.Fatalf("groups web %s web2 %s db %s free %s noprof %s", web, groupOf(in, 1), db, free, noprof)
	}
	for i, eg := range EndpointGroups(in.Endpoints, PreparePolicies(in.Policies)) {
		if eg.ID != groupOf(in, i) || eg.Isolated != (i != 3) {
			t.Fatalf("EndpointGroups[%d] = %+v", i, eg)
		}
	}
	// Not selected by any policy: the group and its chains are what they
	// were before policies (profiles alone decide).
	if free != GroupOf([]string{"P"}) {
		t.Fatal("a group without policies changed its id")
	}
	pass := "-m mark --mark " + Mark + " -j RETURN"
	if got := c4[groupChain(free, inbound)]; !slices.Equal(got, []string{"-j MARK --set-xmark 0x0/0x10000", "-j " + profileChain("P", inbound), pass, "-j DROP"}) {
		t.Fatalf("unisolated group chain %q", got)
	}
	// Isolated in both directions: a profile's allow goes on to the policy
	// stage; the profile chain itself is unchanged, so its deny still drops.
	if got := c4[groupChain(web, inbound)]; !slices.Equal(got, []string{"-j MARK --set-xmark 0x0/0x10000", "-j " + profileChain("P", inbound),
		"-m mark --mark " + Mark + " -g " + policyChain(web, inbound), "-j DROP"}) {
		t.Fatalf("isolated group chain %q", got)
	}
	if got := c4[profileChain("P", inbound)]; got[0] != "-p tcp -m tcp --dport 666 -j DROP" {
		t.Fatalf("profile chain %q", got)
	}
	if got := c4[groupChain(web, outbound)]; got[2] != "-m mark --mark "+Mark+" -g "+policyChain(web, outbound) {
		t.Fatalf("egress-isolated group chain %q", got)
	}
	// db: isolated for ingress only; egress decided by the profiles.
	if got := c4[groupChain(db, outbound)]; got[2] != pass {
		t.Fatalf("db egress %q", got)
	}
	if _, ok := c4[policyChain(db, outbound)]; ok {
		t.Fatal("db has an egress policy stage")
	}
	if got := c4[policyChain(db, inbound)]; !slices.Equal(got, []string{"-j MARK --set-xmark 0x0/0x10000", "-p icmp -j MARK --set-xmark " + Mark, pass, "-j DROP"}) {
		t.Fatalf("db ingress stage %q", got)
	}
	c6 := chainsOf(out.Filter6)
	if got := c6[policyChain(db, inbound)]; got[1] != "-p ipv6-icmp -j MARK --set-xmark "+Mark {
		t.Fatalf("db v6 ingress stage %q", got)
	}
	// No profile: nothing passes, policies or not (fail closed as before).
	if got := c4[groupChain(noprof, inbound)]; !slices.Equal(got, []string{"-j MARK --set-xmark 0x0/0x10000", "-j DROP"}) {
		t.Fatalf("no-profile chain %q", got)
	}
	// Label keys and values never reach the rules.
	for _, tab := range []iptables.Table{out.Filter4, out.Filter6} {
		for _, ch := range tab.Chains {
			for _, r := range ch.Rules {
				for _, w := range []string{"app", "web", "client", "team", "prod", "http"} {
					if strings.Contains(r, w) {
						t.Fatalf("rule %q names %q", r, w)
					}
				}
			}
		}
	}
}

func TestPolicyStageRules(t *testing.T) {
	in := policySample()
	out := Render(in)
	sets := setsOf(out)
	p := PreparePolicies(in.Policies)
	web := groupOf(in, 0)
	prodPolicy := &p[slices.IndexFunc(p, func(x model.Policy) bool { return x.Name == "allow-web" })]
	egPolicy := &p[slices.IndexFunc(p, func(x model.Policy) bool { return x.Name == "web-egress" })]
	ctx := newPolicyCtx(&in)
	clientsProd, _ := ctx.peerSet(prodPolicy, &prodPolicy.Ingress[0].Peers[0], iptables.V4)
	clientsProd6, _ := ctx.peerSet(prodPolicy, &prodPolicy.Ingress[0].Peers[0], iptables.V6)
	clientsB, _ := ctx.peerSet(prodPolicy, &prodPolicy.Ingress[1].Peers[0], iptables.V4)
	// A selector without a namespace selector: the policy's namespace.
	if got := sets[clientsProd].Members; !slices.Equal(got, []string{"10.1.0.1/32"}) {
		t.Fatalf("prod clients %v", got)
	}
	if got := sets[clientsProd6].Members; !slices.Equal(got, []string{"fd00:1::1/128"}) {
		t.Fatalf("prod clients v6 %v", got)
	}
	// podSelector and namespaceSelector: their intersection.
	if got := sets[clientsB].Members; !slices.Equal(got, []string{"10.1.0.2/32"}) {
		t.Fatalf("team=b clients %v", got)
	}
	// Named port, ingress: the group's own endpoints that declare it.
	np := familySet(NamedPortSetPrefix4, NamedPortSetPrefix6, "in|"+web+"|tcp|http", iptables.V4)
	np6 := familySet(NamedPortSetPrefix4, NamedPortSetPrefix6, "in|"+web+"|tcp|http", iptables.V6)
	if got := sets[np]; got.Type != "hash:ip,port" || !slices.Equal(got.Members, []string{"10.0.0.1,tcp:8080", "10.0.0.2,tcp:8081"}) {
		t.Fatalf("ingress named port set %+v", got)
	}
	if got := sets[np6].Members; !slices.Equal(got, []string{"fd00::1,tcp:8080"}) {
		t.Fatalf("ingress named port set v6 %v", got)
	}
	qx := "TABBY-QX-" + hash("-s|192.168.0.0/16|192.168.1.0/24", 16)
	c4 := chainsOf(out.Filter4)
	want := []string{
		"-j MARK --set-xmark 0x0/0x10000",
		"-p tcp -m set --match-set " + clientsProd + " src -m set --match-set " + np + " dst,dst -j MARK --set-xmark " + Mark,
		"-m mark --mark " + Mark + " -j RETURN",
		"-p sctp -m set --match-set " + clientsB + " src -m sctp --dport 9000 -j MARK --set-xmark " + Mark,
		"-m mark --mark " + Mark + " -j RETURN",
		"-p tcp -m multiport --dports 1000:2000,80 -j " + qx,
		"-p udp -m udp --dport 53 -j " + qx,
		"-m mark --mark " + Mark + " -j RETURN",
		"-j DROP",
	}
	if got := c4[policyChain(web, inbound)]; !slices.Equal(got, want) {
		t.Fatalf("web ingress stage\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// CIDR with an exception: the exception returns first.
	if got := c4[qx]; !slices.Equal(got, []string{"-s 192.168.1.0/24 -j RETURN", "-s 192.168.0.0/16 -j MARK --set-xmark " + Mark}) {
		t.Fatalf("except chain %q", got)
	}
	// IPv6: the v4 CIDR peer is not in the table, the v6 one is; the sctp
	// rule's peer has no v6 member (an empty set, still named).
	c6 := chainsOf(out.Filter6)
	if _, ok := c6[qx]; ok {
		t.Fatal("v4 except chain in the v6 table")
	}
	w6 := strings.Join(c6[policyChain(web, inbound)], "\n")
	if !strings.Contains(w6, "-s fd00:99::/64 -p tcp -m multiport --dports 1000:2000,80 -j MARK --set-xmark "+Mark) ||
		!strings.Contains(w6, "-s fd00:99::/64 -p udp -m udp --dport 53 -j MARK") || !strings.Contains(w6, "--match-set "+np6+" dst,dst") {
		t.Fatalf("v6 ingress stage\n%s", w6)
	}
	// Egress: a deny first, then a named port resolved over every
	// namespace's members that declare it.
	npOut := familySet(NamedPortSetPrefix4, NamedPortSetPrefix6, "out|ns:*|sel:|tcp|http", iptables.V4)
	if got := sets[npOut].Members; !slices.Equal(got, []string{"10.0.0.1,tcp:8080", "10.0.0.2,tcp:8081", "10.1.0.2,tcp:80"}) {
		t.Fatalf("egress named port set %v", got)
	}
	all, _ := ctx.peerSet(egPolicy, &egPolicy.Egress[1].Peers[0], iptables.V4)
	want = []string{
		"-j MARK --set-xmark 0x0/0x10000",
		"-d 10.9.0.0/16 -j MARK --set-xmark " + Mark,
		"-m mark --mark " + Mark + " -j DROP",
		"-p tcp -m set --match-set " + all + " dst -m set --match-set " + npOut + " dst,dst -j MARK --set-xmark " + Mark,
		"-m mark --mark " + Mark + " -j RETURN",
		"-j DROP",
	}
	if got := c4[policyChain(web, outbound)]; !slices.Equal(got, want) {
		t.Fatalf("web egress stage\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Every namespace, including endpoints outside any.
	if got := sets[all].Members; len(got) != 6 {
		t.Fatalf("all-namespaces set %v", got)
	}
	// Scope: an empty namespace selector means every namespace.
	if !out.AllMembers {
		t.Fatalf("scope %v all %v", out.MemberNamespaces, out.AllMembers)
	}
}

// What the node follows: only the namespaces the policies selecting its
// endpoints name in peers.
func TestMemberScope(t *testing.T) {
	in := policySample()
	in.Policies = in.Policies[:1] // allow-web: prod (own namespace), team=b -> dev
	out := Render(in)
	if out.AllMembers || !slices.Equal(out.MemberNamespaces, []string{"dev", "prod"}) {
		t.Fatalf("scope %v all %v", out.MemberNamespaces, out.AllMembers)
	}
	names, all := MemberScope(in.Endpoints, PreparePolicies(in.Policies), in.Namespaces)
	if all || !slices.Equal(names, out.MemberNamespaces) {
		t.Fatalf("MemberScope %v %v", names, all)
	}
	// A policy selecting no local endpoint needs nothing.
	in.Endpoints = in.Endpoints[2:4]
	if names, all := MemberScope(in.Endpoints, PreparePolicies(in.Policies), in.Namespaces); all || len(names) != 0 {
		t.Fatalf("scope without selected endpoints %v %v", names, all)
	}
	// A global policy's peer without namespace selector: every namespace.
	in = policySample()
	in.Policies = []model.Policy{{Name: "g", Selector: "app=db", Ingress: []model.PolicyRule{{Peers: []model.Peer{{Selector: "app=client"}}}}}}
	if names, all := MemberScope(in.Endpoints, PreparePolicies(in.Policies), in.Namespaces); !all {
		t.Fatalf("global policy scope %v %v", names, all)
	}
	out = Render(in)
	for _, s := range out.Sets {
		if strings.HasPrefix(s.Name, PeerSetPrefix4) && !slices.Equal(s.Members, []string{"10.1.0.1/32", "10.1.0.2/32", "10.1.0.3/32"}) {
			t.Fatalf("global peer set %v", s.Members)
		}
	}
}

// Union of policies: two policies selecting the same endpoint both apply,
// in order; a namespace selector matching nothing leaves an empty set; a
// named port nobody declares leaves no line; an invalid policy isolates
// what it selects with no rule.
func TestPolicyUnionAndEdges(t *testing.T) {
	in := policySample()
	in.Endpoints = in.Endpoints[2:3] // db
	in.Policies = []model.Policy{
		{Name: "b", Namespace: "prod", Selector: "app=db", Ingress: []model.PolicyRule{{Ports: []model.PolicyPort{{Protocol: "tcp", Port: 5432}}}}},
		{Name: "a", Namespace: "prod", Selector: "app in (db,x)", Ingress: []model.PolicyRule{
			{Peers: []model.Peer{{NamespaceSelector: ptr("team=nobody")}}},
			{Ports: []model.PolicyPort{{Protocol: "udp", Name: "nope"}}},
		}},
	}
	out := Render(in)
	db := groupOf(in, 0)
	got := chainsOf(out.Filter4)[policyChain(db, inbound)]
	if len(got) != 6 || !strings.HasPrefix(got[1], "-m set --match-set "+PeerSetPrefix4) || got[3] != "-p tcp -m tcp --dport 5432 -j MARK --set-xmark "+Mark {
		t.Fatalf("union stage %q", got)
	}
	for _, s := range out.Sets {
		if strings.HasPrefix(s.Name, PeerSetPrefix4) && len(s.Members) != 0 {
			t.Fatalf("a namespace selector matching nothing: %v", s.Members)
		}
	}
	in.Policies = []model.Policy{{Name: "bad", Namespace: "prod", Selector: "app=db", Ingress: []model.PolicyRule{{Action: "maybe"}}}}
	out = Render(in)
	db = groupOf(in, 0)
	c := chainsOf(out.Filter4)
	if !slices.Equal(c[policyChain(db, inbound)], []string{"-j MARK --set-xmark 0x0/0x10000", "-j DROP"}) || len(c[policyChain(db, outbound)]) != 2 {
		t.Fatalf("invalid policy: %q %q", c[policyChain(db, inbound)], c[policyChain(db, outbound)])
	}
	if in.Policies[0].Ingress[0].Action != "maybe" {
		t.Fatal("Render changed its input")
	}
}

// The policy chains and sets load into both families (sctp, multiport,
// hash:ip,port, goto, sub-chains) and read back byte for byte as rendered,
// with iptables-nft and iptables-legacy: a second Apply changes nothing.
func TestPolicyRulesApplyAndAreCanonical(t *testing.T) {
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			// iptables --version picks the mode in an empty netns.
			dir := t.TempDir()
			for _, b := range []string{"iptables", "ip6tables"} {
				target, err := exec.LookPath(b + "-" + mode)
				if err != nil {
					t.Skipf("no %s-%s", b, mode)
				}
				if err := os.Symlink(target, filepath.Join(dir, b)); err != nil {
					t.Fatal(err)
				}
			}
			t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
			roundTrip(t, mode)
		})
	}
}

func roundTrip(t *testing.T, mode string) {
	nstest.Run(t, func() {
		in := policySample()
		// More forms only here: multiport for sctp and udp, a lone range,
		// a whole protocol, ICMP, an egress named port to a selector peer,
		// an IPv6 CIDR with an exception.
		in.Policies = append(in.Policies, model.Policy{Name: "extra", Namespace: "prod", Selector: "app=db", Types: []string{"egress"}, Egress: []model.PolicyRule{
			{Ports: []model.PolicyPort{{Protocol: "sctp", Port: 9000}, {Protocol: "sctp", Port: 9100, EndPort: 9200}, {Protocol: "udp", Port: 53}, {Protocol: "udp", Port: 5353}}},
			{Ports: []model.PolicyPort{{Protocol: "tcp", Port: 1000, EndPort: 2000}, {Protocol: "sctp"}}, Peers: []model.Peer{{CIDR: "fd00:77::/48", Except: []string{"fd00:77:1::/64"}}}},
			{Protocol: "icmp", Peers: []model.Peer{{Selector: "app=client", NamespaceSelector: ptr("team in (a,b)")}}},
			{Action: "deny", Protocol: "udp"},
			{Ports: []model.PolicyPort{{Protocol: "tcp", Name: "http"}}, Peers: []model.Peer{{Selector: "app=web"}}},
		}})
		applyTwice(t, Render(in), func(f iptables.Family, b *iptables.Backend, tab iptables.Table) {
			if b.Mode != mode {
				t.Fatalf("backend %s, want %s", b.Mode, mode)
			}
			for _, c := range tab.Chains {
				have, err := b.Rules("filter", c.Name)
				if err != nil {
					t.Fatal(err)
				}
				if strings.Join(have, "\n") != strings.Join(c.Rules, "\n") {
					t.Errorf("IPv%d chain %s reads back as\n%s\nnot\n%s", f, c.Name, strings.Join(have, "\n"), strings.Join(c.Rules, "\n"))
				}
			}
		})
	})
}
