package ipam

import (
	"context"
	"net"
	"strings"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// Problem is one finding of Check.
type Problem struct {
	Kind   string `json:"kind"`
	IP     string `json:"ip,omitempty"`
	Handle string `json:"handle,omitempty"`
	Host   string `json:"host,omitempty"`
	Block  string `json:"block,omitempty"`
	Detail string `json:"detail"`
}

// Problem kinds.
const (
	LeakNoEndpoint   = "allocation-without-endpoint"
	LeakNoHandle     = "allocation-without-handle"
	OrphanHandle     = "handle-without-allocation"
	EndpointNoAlloc  = "endpoint-without-allocation"
	BlockUnknownHost = "block-of-unknown-host"
)

// Report is what `tabbyctl ipam check` prints.
type Report struct {
	Blocks      int       `json:"blocks"`
	Allocations int       `json:"allocations"`
	Handles     int       `json:"handles"`
	Endpoints   int       `json:"endpoints"`
	Problems    []Problem `json:"problems"`
}

// Check cross-checks blocks, handles, endpoints and hosts. It reads everything
// and is meant for an operator's tool, never a data path. An ADD in flight can
// show as an allocation without endpoint for the moment between its IPAM and
// endpoint writes.
func Check(ctx context.Context, kv store.KV) (*Report, error) {
	blocks, err := store.ListJSON[model.Block](ctx, kv, model.BlockPrefix)
	if err != nil {
		return nil, err
	}
	handles, err := store.ListJSON[model.Handle](ctx, kv, model.HandlePrefix)
	if err != nil {
		return nil, err
	}
	nodes, _, err := kv.List(ctx, model.NodePrefix, false)
	if err != nil {
		return nil, err
	}
	hosts := map[string]bool{}
	// A host's VXLAN and IPIP tunnel addresses are allocations that no
	// endpoint uses but its host record does: not leaks.
	epIPs := map[string]bool{}
	for _, r := range nodes {
		hosts[strings.TrimPrefix(r.Key, model.NodePrefix)] = true
		var h model.Host
		if store.DecodeJSON(r.Value, &h) == nil {
			for _, a := range []string{h.VXLANTunnelAddr, h.IPIPTunnelAddr} {
				if ip := net.ParseIP(a); ip != nil {
					epIPs[ip.String()] = true
				}
			}
		}
	}
	hostKVs, _, err := kv.List(ctx, model.HostPrefix, false)
	if err != nil {
		return nil, err
	}
	var eps []model.Endpoint
	for _, r := range hostKVs {
		if _, _, _, _, ok := model.ParseEndpointKey(r.Key); ok {
			var e model.Endpoint
			if store.DecodeJSON(r.Value, &e) == nil {
				eps = append(eps, e)
			}
		}
	}
	rep := &Report{Blocks: len(blocks), Handles: len(handles), Endpoints: len(eps)}
	for _, e := range eps {
		for _, n := range e.Nets() {
			ip, _, _ := net.ParseCIDR(n)
			epIPs[ip.String()] = true
		}
	}
	hIPs := map[string]string{}
	for _, h := range handles {
		for _, ip := range h.IPs {
			hIPs[ip] = h.ID
		}
	}
	allocated := map[string]bool{}
	byHandle := map[string]bool{}
	for _, b := range blocks {
		_, n, _ := net.ParseCIDR(b.CIDR)
		if len(hosts) > 0 && !hosts[b.Affinity] {
			rep.Problems = append(rep.Problems, Problem{Kind: BlockUnknownHost, Block: b.CIDR, Host: b.Affinity,
				Detail: "block is affine to a host that is not registered; if the host is gone, release its workloads' addresses"})
		}
		for i, a := range b.Allocations {
			if a == nil {
				continue
			}
			rep.Allocations++
			ip := nthIP(n, i).String()
			allocated[ip] = true
			byHandle[a.Handle] = true
			if hIPs[ip] != a.Handle {
				rep.Problems = append(rep.Problems, Problem{Kind: LeakNoHandle, IP: ip, Handle: a.Handle, Host: a.Host, Block: b.CIDR,
					Detail: "no handle record names this address; 'tabbyctl ipam release --ip " + ip + "' frees it"})
			} else if !epIPs[ip] {
				rep.Problems = append(rep.Problems, Problem{Kind: LeakNoEndpoint, IP: ip, Handle: a.Handle, Host: a.Host, Block: b.CIDR,
					Detail: "no endpoint uses this address; if its container is gone, CNI GC or 'tabbyctl ipam release --ip " + ip + "' frees it"})
			}
		}
	}
	for _, h := range handles {
		if !byHandle[h.ID] {
			rep.Problems = append(rep.Problems, Problem{Kind: OrphanHandle, Handle: h.ID, Host: h.Host, Detail: "handle holds no allocated address"})
		}
	}
	for _, e := range eps {
		for _, n := range e.Nets() {
			ip, _, _ := net.ParseCIDR(n)
			if !allocated[ip.String()] {
				rep.Problems = append(rep.Problems, Problem{Kind: EndpointNoAlloc, IP: ip.String(), Host: e.Host,
					Detail: "endpoint " + e.Key() + " uses an address IPAM has not allocated (host-local IPAM, or a released address)"})
			}
		}
	}
	return rep, nil
}
