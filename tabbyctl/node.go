package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/nodestatus"
	"github.com/tabby-net/tabby/pkg/retire"
	"github.com/tabby-net/tabby/pkg/store"
)

func nodeCommands() []*command {
	hostFlag := flagSpec{name: "host", value: true, help: "only this host"}
	return []*command{
		{path: []string{"node", "show"}, usage: "node show", help: "list registered hosts", run: withKV(nodeShow)},
		{path: []string{"node", "set"}, usage: "node set NAME --route-reflector CLUSTER_ID|off",
			help:  "make host NAME a BGP route reflector with CLUSTER_ID (an IPv4 address), or an ordinary host again; reflectors serve when the mesh is off",
			flags: []flagSpec{{name: "route-reflector", value: true}}, run: withKV(nodeSet)},
		{path: []string{"node", "remove"}, usage: "node remove NAME",
			help: "remove a host that is gone for good: its endpoints, the addresses it holds, its blocks and affinities, its BGP peers and its record (stop its tabby-node first, or it registers again)",
			run:  withKV(nodeRemove)},
		{path: []string{"node", "status"}, usage: "node status [--state-dir DIR]", help: "this host's daemon: state and BGP peers (from its status socket)",
			flags: []flagSpec{{name: "state-dir", value: true, help: "the daemon's state dir (default /var/run/tabby)"}}, run: nodeStatus},
		{path: []string{"bgp", "peer", "add"}, usage: "bgp peer add IP --as N [--host H]", help: "add a BGP peer for every host, or for host H",
			flags: []flagSpec{{name: "as", value: true}, hostFlag}, run: withKV(peerAdd)},
		{path: []string{"bgp", "peer", "remove"}, usage: "bgp peer remove IP [--host H]", help: "remove a BGP peer",
			flags: []flagSpec{hostFlag}, run: withKV(peerRemove)},
		{path: []string{"bgp", "peer", "show"}, usage: "bgp peer show", help: "list configured BGP peers", run: withKV(peerShow)},
		{path: []string{"bgp", "config", "set"}, usage: "bgp config set [--as N] [--mesh on|off]", help: "cluster AS number and full mesh on or off",
			flags: []flagSpec{{name: "as", value: true}, {name: "mesh", value: true}}, run: withKV(bgpConfigSet)},
	}
}

func nodeShow(cx context.Context, kv store.KV, c *ctx) error {
	kvs, _, err := kv.List(cx, model.NodePrefix, false)
	if err != nil {
		return err
	}
	hosts := []model.Host{}
	var rows [][]string
	for _, r := range kvs {
		var h model.Host
		if err := store.DecodeJSON(r.Value, &h); err != nil {
			return fmt.Errorf("decode %s: %w", r.Key, err)
		}
		hosts = append(hosts, h)
		as := "-"
		if h.ASNumber != 0 {
			as = strconv.FormatUint(uint64(h.ASNumber), 10)
		}
		rows = append(rows, []string{h.Name, orDash(h.IPv4), orDash(h.IPv6), as, orDash(h.VXLANTunnelAddr), strconv.FormatBool(h.IPIPSupported),
			orDash(h.RouteReflectorClusterID)})
	}
	return c.emit(hosts, []string{"NAME", "IPV4", "IPV6", "AS", "VXLAN-ADDR", "IPIP", "RR-CLUSTER"}, rows)
}

// nodeSet changes what the operator decides about a registered host: for
// now whether it is a route reflector. The host's daemon keeps the role
// unless it runs with --route-reflector itself.
func nodeSet(cx context.Context, kv store.KV, c *ctx) error {
	if err := needArgs(c, 1, "one host name"); err != nil {
		return err
	}
	name := c.args[0]
	if err := model.ValidName(name); err != nil {
		return usagef("host: %v", err)
	}
	if !c.has("route-reflector") {
		return usagef("give --route-reflector CLUSTER_ID|off")
	}
	id := c.flag("route-reflector", "")
	if id == "off" {
		id = ""
	} else if err := model.ValidClusterID(id); err != nil {
		return usagef("--route-reflector: %v", err)
	}
	err := store.Update(cx, kv, model.NodeKey(name), func(cur *model.Host, exists bool) (*model.Host, error) {
		if !exists {
			return nil, fmt.Errorf("no host %s registered (tabbyctl node show lists them)", name)
		}
		if cur.RouteReflectorClusterID == id {
			return nil, store.ErrAbort
		}
		cur.RouteReflectorClusterID = id
		return cur, nil
	})
	if err != nil && !errors.Is(err, store.ErrAbort) {
		return fmt.Errorf("set host %s: %w", name, err)
	}
	if id == "" {
		fmt.Fprintf(c.out, "host %s: not a route reflector\n", name)
	} else {
		fmt.Fprintf(c.out, "host %s: route reflector, cluster ID %s\n", name, id)
	}
	return nil
}

// nodeRemove retires a host (package retire). Run again after a failure,
// it finishes the job: the record goes last.
func nodeRemove(cx context.Context, kv store.KV, c *ctx) error {
	if err := needArgs(c, 1, "one host name"); err != nil {
		return err
	}
	name := c.args[0]
	if err := model.ValidName(name); err != nil {
		return usagef("host: %v", err)
	}
	rep, err := retire.Host(cx, kv, name)
	if err != nil {
		return fmt.Errorf("remove host %s (run it again to finish): %w", name, err)
	}
	if rep.Empty() {
		return fmt.Errorf("no host %s registered, and nothing in etcd is its (tabbyctl node show lists hosts)", name)
	}
	if c.format != "table" {
		return c.emit(rep, nil, nil)
	}
	d := rep.IPAM
	fmt.Fprintf(c.out, "host %s removed: %d endpoints, %d more handles released, %d addresses without a handle freed, %d of its %d blocks returned to their pools, %d other keys\n",
		name, len(rep.Endpoints), len(d.Released), d.Cleared, rep.Blocks-len(d.Unaffined), rep.Blocks, rep.Keys)
	if len(d.Unaffined) > 0 {
		fmt.Fprintf(c.out, "blocks other hosts still borrow addresses from, now without an affinity (each goes with its last address): %s\n", strings.Join(d.Unaffined, ", "))
	}
	return nil
}

func nodeStatus(c *ctx) error {
	cx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := nodestatus.Get(cx, stateDirFlag(c))
	if err != nil {
		return err
	}
	if c.format != "table" {
		return c.emit(st, nil, nil)
	}
	state := "running"
	if !st.Ready {
		state = "starting (reading etcd)"
	} else if !st.Settled {
		state = "running (BGP settling)"
	}
	fmt.Fprintf(c.out, "tabby-node %s is %s\n", st.Name, state)
	fmt.Fprintf(c.out, "IPv4 %s, version %s, %d routes programmed, last reconcile %s ago (%.1f ms)\n",
		st.IPv4, st.Version, st.Routes, time.Since(st.LastReconcile).Round(time.Second), st.ReconcileMillis)
	if !st.IPIPSupported {
		fmt.Fprintln(c.out, "IPIP: not supported by this kernel; IPIP pools cannot be served on this host")
	}
	if st.IPv6PolicyError != "" {
		fmt.Fprintf(c.out, "IPv6 policy: NOT ENFORCED: %s; endpoints with IPv6 addresses are not made ready (their ADD fails)\n", st.IPv6PolicyError)
	}
	if st.IPv6NATError != "" {
		fmt.Fprintf(c.out, "IPv6 nat-outgoing: not in force: %s\n", st.IPv6NATError)
	}
	if len(st.Unserved) > 0 {
		fmt.Fprintf(c.out, "unserved prefixes: %s\n", strings.Join(st.Unserved, ", "))
	}
	for _, e := range st.Errors {
		fmt.Fprintf(c.out, "error: %s\n", e)
	}
	fmt.Fprintln(c.out, "\nBGP peers:")
	var rows [][]string
	for _, p := range st.Peers {
		since := "-"
		if !p.Since.IsZero() {
			since = p.Since.Format("15:04:05")
		}
		rows = append(rows, []string{p.Address, p.Kind, p.State, since, strconv.Itoa(p.Received)})
	}
	return c.emit(st, []string{"PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "ROUTES RECEIVED"}, rows)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func parseAS(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 {
		return 0, usagef("AS number %q: want 1..4294967295", s)
	}
	return uint32(n), nil
}

func peerKey(c *ctx) (string, string, error) {
	if len(c.args) != 1 || net.ParseIP(c.args[0]) == nil {
		return "", "", usagef("want one peer IP address")
	}
	ip := net.ParseIP(c.args[0]).String()
	if h := c.flag("host", ""); h != "" {
		if err := model.ValidName(h); err != nil {
			return "", "", usagef("host: %v", err)
		}
		return model.HostBGPPeerKey(h, ip), ip, nil
	}
	return model.GlobalBGPPeerKey(ip), ip, nil
}

func peerAdd(cx context.Context, kv store.KV, c *ctx) error {
	key, ip, err := peerKey(c)
	if err != nil {
		return err
	}
	if !c.has("as") {
		return usagef("--as N is required")
	}
	as, err := parseAS(c.flag("as", ""))
	if err != nil {
		return err
	}
	if err := store.PutJSON(cx, kv, key, model.BGPPeer{IP: ip, ASNumber: as, Host: c.flag("host", "")}); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "BGP peer %s (AS %d) added\n", ip, as)
	return nil
}

func peerRemove(cx context.Context, kv store.KV, c *ctx) error {
	key, ip, err := peerKey(c)
	if err != nil {
		return err
	}
	if _, err := kv.Get(cx, key); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("no BGP peer %s configured there", ip)
		}
		return err
	}
	if _, err := kv.Txn(cx, nil, []store.Op{store.Delete(key)}); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "BGP peer %s removed\n", ip)
	return nil
}

func peerShow(cx context.Context, kv store.KV, c *ctx) error {
	peers, err := store.ListJSON[model.BGPPeer](cx, kv, model.BGPPeerPrefix)
	if err != nil {
		return err
	}
	// Per-host peers live in each host's subtree.
	kvs, _, err := kv.List(cx, model.HostPrefix, false)
	if err != nil {
		return err
	}
	for _, r := range kvs {
		if strings.Contains(r.Key, "/bgppeer/") {
			var p model.BGPPeer
			if store.DecodeJSON(r.Value, &p) == nil {
				peers = append(peers, p)
			}
		}
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].Host+peers[i].IP < peers[j].Host+peers[j].IP })
	var rows [][]string
	for _, p := range peers {
		scope := "global"
		if p.Host != "" {
			scope = "host " + p.Host
		}
		rows = append(rows, []string{p.IP, strconv.FormatUint(uint64(p.ASNumber), 10), scope})
	}
	if peers == nil {
		peers = []model.BGPPeer{}
	}
	return c.emit(peers, []string{"PEER", "AS", "SCOPE"}, rows)
}

func bgpConfigSet(cx context.Context, kv store.KV, c *ctx) error {
	if !c.has("as") && !c.has("mesh") {
		return usagef("give --as N and/or --mesh on|off")
	}
	var as uint32
	var err error
	if c.has("as") {
		if as, err = parseAS(c.flag("as", "")); err != nil {
			return err
		}
	}
	mesh := c.flag("mesh", "")
	if mesh != "" && mesh != "on" && mesh != "off" {
		return usagef("--mesh %q: use on or off", mesh)
	}
	var out model.BGPConfig
	err = store.Update(cx, kv, model.BGPConfigKey, func(cur *model.BGPConfig, exists bool) (*model.BGPConfig, error) {
		if !exists {
			*cur = model.DefaultBGPConfig()
		}
		if as != 0 {
			cur.ASNumber = as
		}
		if mesh != "" {
			cur.Mesh = mesh == "on"
		}
		out = *cur
		return cur, nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "BGP: AS %d, full mesh %v\n", out.ASNumber, out.Mesh)
	return nil
}

func stateDirFlag(c *ctx) string {
	if d := c.flag("state-dir", os.Getenv("TABBY_STATE_DIR")); d != "" {
		return d
	}
	return "/var/run/tabby"
}
