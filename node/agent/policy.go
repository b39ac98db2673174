package agent

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tabby-net/tabby/node/iptables"
	"github.com/tabby-net/tabby/node/policy"
	"github.com/tabby-net/tabby/node/watch"
	"github.com/tabby-net/tabby/pkg/model"
)

// basePrefixes are what every node follows; tag prefixes come on top, for
// the tags its local rules name.
func (a *Agent) basePrefixes() []string {
	return []string{model.PoolPrefix, model.NodePrefix, model.BGPConfigKey, model.BGPPeerPrefix, model.ProfilePrefix,
		model.HostSubtree(a.cfg.Name), model.AffinityHostPrefix(a.cfg.Name)}
}

// readiness tracks which endpoints' rules are in force, for the CNI
// plugin's wait.
type readiness struct {
	mu      sync.Mutex
	applied map[string]string // host interface -> container ID
	changed chan struct{}     // closed and replaced on every change
}

func newReadiness() *readiness {
	return &readiness{applied: map[string]string{}, changed: make(chan struct{})}
}

func (r *readiness) set(m map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied = m
	close(r.changed)
	r.changed = make(chan struct{})
}

// wait blocks until iface carries container's rules, or ctx ends.
func (r *readiness) wait(ctx context.Context, iface, container string) error {
	for {
		r.mu.Lock()
		ok := r.applied[iface] == container
		ch := r.changed
		r.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("rules for %s (container %s) not in force: %w", iface, container, ctx.Err())
		case <-ch:
		}
	}
}

// syncPolicy renders and applies the packet filter for this host's
// endpoints. It first makes the cache follow exactly the tags the rules
// name; rules are marked ready only once those tags are loaded.
func (a *Agent) syncPolicy(v *view, full bool) error {
	profiles := map[string]model.Profile{}
	for _, p := range watch.Decode[model.Profile](a.cache, model.ProfilePrefix, nil) {
		profiles[p.Name] = p
	}
	var names []string
	for _, e := range v.endpoints {
		names = append(names, e.Profiles...)
	}
	tags := policy.Referenced(profiles, names)
	want := a.basePrefixes()
	for _, t := range tags {
		want = append(want, model.TagMembersPrefix(t))
	}
	a.cache.SetPrefixes(want...)
	members := map[string][]string{}
	for _, t := range tags {
		for _, m := range watch.Decode[model.TagMember](a.cache, model.TagMembersPrefix(t), nil) {
			members[t] = append(members[t], m.Nets...)
		}
		sort.Strings(members[t])
	}
	out := policy.Render(policy.Input{Endpoints: v.endpoints, Profiles: profiles, Tags: members, HostPorts: a.cfg.HostPorts})
	// Sets before the rules that name them; stale sets after.
	// On the event path tabby diffs against what it last applied (a CNI ADD
	// is waiting); the periodic pass (full) reads the kernel and repairs
	// what anyone else changed.
	syncSets, apply4, apply6, listSets := iptables.SyncSetsKnown, a.ipt4.ApplyKnown, func(...iptables.Table) error { return nil }, iptables.KnownSets
	if a.ipt6 != nil {
		apply6 = a.ipt6.ApplyKnown
	}
	if full {
		syncSets, apply4, listSets = iptables.SyncSets, a.ipt4.Apply, iptables.ListSets
		if a.ipt6 != nil {
			apply6 = a.ipt6.Apply
		}
	}
	if _, err := syncSets(out.Sets...); err != nil {
		return err
	}
	if err := apply4(out.Filter4); err != nil {
		return err
	}
	if err := apply6(out.Filter6); err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, s := range out.Sets {
		keep[s.Name] = true
	}
	if existing, err := listSets(); err == nil {
		for _, s := range existing {
			if (strings.HasPrefix(s, "tabby-t4-") || strings.HasPrefix(s, "tabby-t6-")) && !keep[s] {
				if err := iptables.DestroySet(s); err != nil {
					a.log.Warn("stale ipset", "set", s, "err", err)
				}
			}
		}
	}
	if a.cache.Synced() {
		a.ready.set(out.Ready)
	}
	return nil
}

// parseHostPorts reads "udp:53,tcp:8080" (the --workload-host-ports flag).
func ParseHostPorts(s string) ([]policy.HostPort, error) {
	var out []policy.HostPort
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		proto, port, ok := strings.Cut(item, ":")
		var n int
		if _, err := fmt.Sscanf(port, "%d", &n); !ok || err != nil || n < 1 || n > 65535 || (proto != "tcp" && proto != "udp") {
			return nil, fmt.Errorf("host port %q: want tcp:N or udp:N", item)
		}
		out = append(out, policy.HostPort{Protocol: proto, Port: n})
	}
	return out, nil
}

// readyTimeout bounds one /ready request.
const readyTimeout = 30 * time.Second
