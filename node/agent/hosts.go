package agent

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/node/watch"
	"github.com/tabby-net/tabby/pkg/model"
)

// newCache is the node's watch cache: the host list is kept decoded only.
func newCache(cli *clientv3.Client, log *slog.Logger) *watch.Cache {
	c := watch.New(cli, log)
	c.SetDecoder(model.NodePrefix, decodeHost)
	return c
}

// decodeHost is the watch cache's decoder of the host list: every node
// follows every host record, so the cache keeps one decoded record per
// host, not its JSON as well, and without what no node reads of another
// host (its version). The name shares the key's memory when they agree.
func decodeHost(key string, value []byte) (any, error) {
	h := new(model.Host)
	if err := json.Unmarshal(value, h); err != nil {
		return nil, fmt.Errorf("host record %s: %w", key, err)
	}
	if name := strings.TrimPrefix(key, model.NodePrefix); name == h.Name {
		h.Name = name
	}
	h.Version = ""
	return h, nil
}

// hostIndex is what a node derives from the host list for its BGP peers
// and routes. It is rebuilt only when the host list changes, not on every
// pass: at 10,000 hosts a pass must not copy or parse the list.
type hostIndex struct {
	names      []string // every host, sorted
	reflectors []string // route reflectors, sorted
	byAddr     map[netip.Addr]*model.Host
}

func newHostIndex(nodes map[string]*model.Host) *hostIndex {
	x := &hostIndex{names: make([]string, 0, len(nodes)), byAddr: make(map[netip.Addr]*model.Host, len(nodes))}
	for n, h := range nodes {
		x.names = append(x.names, n)
		if h.IsReflector() {
			x.reflectors = append(x.reflectors, n)
		}
	}
	sort.Strings(x.names)
	sort.Strings(x.reflectors)
	// The first host by name wins an address two records claim, so the
	// choice does not change from pass to pass.
	for _, n := range x.names {
		h := nodes[n]
		for _, s := range []string{h.IPv4, h.IPv6} {
			if a, ok := hostAddr(s); ok {
				if _, dup := x.byAddr[a]; !dup {
					x.byAddr[a] = h
				}
			}
		}
	}
	return x
}

// hostAddr is the address of an address/prefix or a bare address, as
// addrOf reads it, without allocating.
func hostAddr(s string) (netip.Addr, bool) {
	if s == "" {
		return netip.Addr{}, false
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap(), true
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
