package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/netconf"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/workload"
)

// DefaultConf is the conflist `container add` uses without --conf.
const DefaultConf = "/etc/cni/net.d/10-tabby.conflist"

func containerCommands() []*command {
	confFlag := flagSpec{name: "conf", value: true, help: "conflist file"}
	return []*command{
		{path: []string{"container", "add"}, usage: "container add NAME IP --netns PATH [--conf FILE]",
			help:  "attach a running container's netns with a fixed IP (a CNI ADD made for you)",
			flags: []flagSpec{{name: "netns", value: true}, confFlag}, run: withKV(containerAdd)},
		{path: []string{"container", "remove"}, usage: "container remove NAME [--conf FILE]", help: "detach a container (a CNI DEL made for you)",
			flags: []flagSpec{confFlag, {name: "host", value: true}}, run: withKV(containerRemove)},
		{path: []string{"container", "show"}, usage: "container show [--host H] [--labels]",
			help:  "list endpoints: name, host, addresses, interface, profiles (--labels: also namespace and labels)",
			flags: []flagSpec{{name: "host", value: true}, {name: "labels", help: "add the NAMESPACE and LABELS columns"}}, run: withKV(containerShow)},
		{path: []string{"container", "NAME", "profile", "append"}, usage: "container NAME profile append PROFILE...", help: "add profiles to a container's endpoint",
			flags: []flagSpec{{name: "host", value: true}}, run: withKV(profileOp("append"))},
		{path: []string{"container", "NAME", "profile", "remove"}, usage: "container NAME profile remove PROFILE...", help: "take profiles off a container's endpoint",
			flags: []flagSpec{{name: "host", value: true}}, run: withKV(profileOp("remove"))},
		{path: []string{"container", "NAME", "profile", "set"}, usage: "container NAME profile set PROFILE...", help: "replace a container's profiles (none: no traffic)",
			flags: []flagSpec{{name: "host", value: true}}, run: withKV(profileOp("set"))},
	}
}

// cniSetup loads the conflist and the CNI plumbing libcni needs.
func cniSetup(c *ctx) (*libcni.NetworkConfigList, *libcni.CNIConfig, *netconf.NetConf, error) {
	path := c.flag("conf", os.Getenv("TABBY_CNI_CONF"))
	if path == "" {
		path = DefaultConf
	}
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read CNI configuration %s (give one with --conf): %w", path, err)
	}
	var tabbyConf *netconf.NetConf
	for _, p := range list.Plugins {
		if p.Network.Type == "tabby" {
			// A plugin inside a list gets its name and version from the list.
			var m map[string]any
			if err := json.Unmarshal(p.Bytes, &m); err != nil {
				return nil, nil, nil, fmt.Errorf("%s: %w", path, err)
			}
			m["name"], m["cniVersion"] = list.Name, list.CNIVersion
			raw, _ := json.Marshal(m)
			if tabbyConf, err = netconf.Parse(raw); err != nil {
				return nil, nil, nil, fmt.Errorf("%s: %w", path, err)
			}
		}
	}
	if tabbyConf == nil {
		return nil, nil, nil, fmt.Errorf("%s has no plugin of type tabby", path)
	}
	cniPath := os.Getenv("CNI_PATH")
	if cniPath == "" {
		self, _ := os.Executable()
		cniPath = strings.Join([]string{"/opt/cni/bin", filepath.Dir(self), "/usr/lib/cni"}, ":")
	}
	// The results cache lives in the host's state dir, so simulated hosts
	// sharing one filesystem do not share it.
	cache := filepath.Join(tabbyConf.State(), "cni-cache")
	cfg := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(cniPath), cache, nil)
	if v := c.flag("etcd-endpoints", ""); v != "" {
		os.Setenv("ETCD_ENDPOINTS", v)
	}
	return list, cfg, tabbyConf, nil
}

func containerAdd(cx context.Context, kv store.KV, c *ctx) error {
	if err := needArgs(c, 2, "NAME and IP, e.g. container add conA 10.0.0.1 --netns /run/netns/conA"); err != nil {
		return err
	}
	name, ipStr := c.args[0], c.args[1]
	if err := model.ValidName(name); err != nil {
		return usagef("container name: %v", err)
	}
	var ips []string
	for _, s := range strings.Split(ipStr, ",") {
		if net.ParseIP(s) == nil {
			return usagef("%q is not an IP address", s)
		}
		ips = append(ips, s)
	}
	nsPath := c.flag("netns", "")
	if nsPath == "" {
		return usagef("--netns PATH is required (e.g. /run/netns/NAME or /proc/PID/ns/net)")
	}
	if _, err := os.Stat(nsPath); err != nil {
		return fmt.Errorf("netns %s: %w", nsPath, err)
	}
	list, cfg, conf, err := cniSetup(c)
	if err != nil {
		return err
	}
	// The workload is NAME; the container ID (the IPAM handle's key) also
	// names the host, so the same NAME on two hosts is two containers.
	rt := &libcni.RuntimeConf{ContainerID: localHost(conf) + "-" + name, NetNS: nsPath, IfName: "eth0",
		Args: [][2]string{{"IP", strings.Join(ips, ",")}, {"TABBY_WORKLOAD", name}}}
	res, err := cfg.AddNetworkList(cx, list, rt)
	if err != nil {
		return fmt.Errorf("add %s: %w", name, err)
	}
	if c.format == "table" {
		fmt.Fprintf(c.out, "container %s added with %s\n", name, strings.Join(ips, ","))
		return nil
	}
	var v any
	b, _ := json.Marshal(res)
	_ = json.Unmarshal(b, &v)
	return c.emit(v, nil, nil)
}

// localHost is this machine's node name as the plugin would pick it.
func localHost(conf *netconf.NetConf) string {
	if conf == nil {
		conf = &netconf.NetConf{}
	}
	h, _ := conf.Node()
	return h
}

// findEndpoint finds a workload's endpoint by name: on --host, else on this
// host, else (an operator's path, never a data path) across all hosts.
func findEndpoint(cx context.Context, kv store.KV, c *ctx, name string, conf *netconf.NetConf) (*model.Endpoint, error) {
	hosts := []string{c.flag("host", "")}
	if hosts[0] == "" {
		hosts = []string{localHost(conf), ""}
	}
	for _, h := range hosts {
		var eps []model.Endpoint
		var err error
		if h != "" {
			eps, err = store.ListJSON[model.Endpoint](cx, kv, model.HostWorkloadPrefix(h))
		} else {
			eps, err = allEndpoints(cx, kv)
		}
		if err != nil {
			return nil, err
		}
		var found []model.Endpoint
		for _, e := range eps {
			if e.Workload == name || e.ContainerID == name || e.DisplayName() == name {
				found = append(found, e)
			}
		}
		if len(found) == 1 {
			return &found[0], nil
		}
		if len(found) > 1 {
			var where []string
			for _, e := range found {
				where = append(where, e.Key())
			}
			return nil, fmt.Errorf("%d endpoints are named %s (%s); say which with --host", len(found), name, strings.Join(where, ", "))
		}
	}
	return nil, fmt.Errorf("no container %s (see 'tabbyctl container show')", name)
}

func allEndpoints(cx context.Context, kv store.KV) ([]model.Endpoint, error) {
	kvs, _, err := kv.List(cx, model.HostPrefix, false)
	if err != nil {
		return nil, err
	}
	var out []model.Endpoint
	for _, r := range kvs {
		if _, _, _, _, ok := model.ParseEndpointKey(r.Key); !ok {
			continue
		}
		var e model.Endpoint
		if err := json.Unmarshal(r.Value, &e); err != nil {
			return nil, fmt.Errorf("decode %s: %w", r.Key, err)
		}
		out = append(out, e)
	}
	return out, nil
}

func containerRemove(cx context.Context, kv store.KV, c *ctx) error {
	if err := needArgs(c, 1, "a container NAME"); err != nil {
		return err
	}
	list, cfg, conf, err := cniSetup(c)
	if err != nil {
		return err
	}
	ep, err := findEndpoint(cx, kv, c, c.args[0], conf)
	if err != nil {
		return err
	}
	rt := &libcni.RuntimeConf{ContainerID: ep.ContainerID, NetNS: ep.Netns, IfName: ep.IfName,
		Args: [][2]string{{"TABBY_WORKLOAD", ep.Workload}, {"TABBY_ORCHESTRATOR", ep.Orchestrator}}}
	if err := cfg.DelNetworkList(cx, list, rt); err != nil {
		return fmt.Errorf("remove %s: %w", c.args[0], err)
	}
	fmt.Fprintf(c.out, "container %s removed\n", c.args[0])
	return nil
}

func containerShow(cx context.Context, kv store.KV, c *ctx) error {
	var eps []model.Endpoint
	var err error
	if h := c.flag("host", ""); h != "" {
		eps, err = store.ListJSON[model.Endpoint](cx, kv, model.HostWorkloadPrefix(h))
	} else {
		eps, err = allEndpoints(cx, kv)
	}
	if err != nil {
		return err
	}
	sort.Slice(eps, func(i, j int) bool { return eps[i].Key() < eps[j].Key() })
	labels := c.has("labels")
	header := []string{"NAME", "HOST", "ADDRESSES", "INTERFACE", "PROFILES"}
	if labels {
		header = []string{"NAME", "NAMESPACE", "HOST", "ADDRESSES", "INTERFACE", "PROFILES", "LABELS"}
	}
	var rows [][]string
	for _, e := range eps {
		if labels {
			ns := e.Namespace
			if ns == "" {
				ns = "-"
			}
			rows = append(rows, []string{e.DisplayName(), ns, e.Host, joinOrDash(e.Nets()), e.HostInterface, joinOrDash(e.Profiles), labelString(e.Labels)})
			continue
		}
		rows = append(rows, []string{e.DisplayName(), e.Host, joinOrDash(e.Nets()), e.HostInterface, joinOrDash(e.Profiles)})
	}
	if eps == nil {
		eps = []model.Endpoint{}
	}
	return c.emit(eps, header, rows)
}

// labelString is k=v,k2=v2 sorted by key, or - for none.
func labelString(m map[string]string) string {
	var kv []string
	for k, v := range m {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return joinOrDash(kv)
}

func profileOp(op string) func(context.Context, store.KV, *ctx) error {
	return func(cx context.Context, kv store.KV, c *ctx) error {
		if op != "set" && len(c.args) == 0 {
			return usagef("name at least one profile")
		}
		for _, p := range c.args {
			if err := model.ValidName(p); err != nil {
				return usagef("profile: %v", err)
			}
			if op != "remove" {
				if _, err := kv.Get(cx, model.ProfileKey(p)); err != nil {
					return fmt.Errorf("profile %s: %w (create it with 'tabbyctl profile add %s')", p, err, p)
				}
			}
		}
		ep, err := findEndpoint(cx, kv, c, c.names[0], nil)
		if err != nil {
			return err
		}
		out, err := workload.UpdateProfiles(cx, kv, ep.Key(), func(cur []string) ([]string, error) {
			switch op {
			case "append":
				return append(cur, c.args...), nil
			case "set":
				return c.args, nil
			}
			drop := map[string]bool{}
			for _, p := range c.args {
				drop[p] = true
			}
			var keep []string
			for _, p := range cur {
				if !drop[p] {
					keep = append(keep, p)
				}
			}
			return keep, nil
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(c.out, "container %s profiles: %s\n", c.names[0], joinOrDash(out.Profiles))
		return nil
	}
}
