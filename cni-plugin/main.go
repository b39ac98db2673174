// tabby is the CNI plugin: a veth into the container with /32 and /128
// addresses behind a link-local gateway on a routed host, the endpoint record
// in etcd, and (with tabby-node) policy in force before ADD returns.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/dataplane"
	"github.com/tabby-net/tabby/pkg/ifaddr"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/netconf"
	"github.com/tabby-net/tabby/pkg/plugin"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/workload"
)

// Version is set at build time.
var Version = "dev"

func main() {
	plugin.Main(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus}, "tabby "+Version)
}

// call is one invocation's parsed input and connections.
type call struct {
	*plugin.Env
	wargs    *netconf.Args
	workload string
	epKey    string
	veth     string
	mark     func(step string) // ADD's step log (nil outside ADD)
}

func open(e *plugin.Env) (*call, error) {
	if e.Conf.IPAM.Type == "" {
		return nil, cnierr.New(cnierr.BadConfig, "network configuration has no ipam type; use \"tabby-ipam\" (or host-local)")
	}
	wa, err := netconf.ParseArgs(e.Args.Args, e.Conf)
	if err != nil {
		return nil, err
	}
	wl := wa.Workload
	if wl == "" {
		wl = e.Args.ContainerID
	}
	// GC and STATUS come without a container (skel requires one for ADD,
	// DEL and CHECK).
	if wl != "" {
		if err := model.ValidName(wl); err != nil {
			return nil, cnierr.New(cnierr.BadArgs, "container ID: %v", err)
		}
	}
	return &call{
		Env: e, wargs: wa, workload: wl,
		epKey: model.EndpointKey(e.Host, wa.Orchestrator, wl, e.Args.IfName),
		veth:  dataplane.HostVethName(wa.Orchestrator + "/" + wl + "/" + e.Args.IfName),
	}, nil
}

// delegateEnv makes the IPAM plugin tolerate tabby's own CNI_ARGS keys:
// host-local, like every reference plugin, refuses unknown keys otherwise.
func delegateEnv() {
	a := os.Getenv("CNI_ARGS")
	if !strings.Contains(a, "IgnoreUnknown=") {
		if a != "" {
			a += ";"
		}
		os.Setenv("CNI_ARGS", a+"IgnoreUnknown=1")
	}
}

func verb(name string, d time.Duration, fn func(context.Context, *call) error) func(*skel.CmdArgs) error {
	return plugin.Verb("tabby", name, d, open, fn)
}

var cmdAdd = verb("ADD", plugin.Deadline, func(ctx context.Context, c *call) error {
	res, err := c.add(ctx)
	if err != nil {
		return err
	}
	return types.PrintResult(res, c.Conf.CNIVersion)
})

// inProcessIPAM: with tabby-ipam as the IPAM, tabby runs the same IPAM code
// itself instead of exec'ing it (one process start and one etcd connection
// less per ADD, and the endpoint and pool reads ride in IPAM's first round
// trip). "ipam_exec": true restores plain delegation.
func (c *call) inProcessIPAM() bool { return c.Conf.IPAM.Type == "tabby-ipam" && !c.Conf.IPAMExec }

func (c *call) ipam() *ipam.IPAM {
	return &ipam.IPAM{KV: c.KV, Host: c.Host, LockDir: c.Conf.State(), Trace: c.mark}
}

// ipamOutcome is what the IPAM step did.
type ipamOutcome struct {
	result   *current.Result
	prev     *model.Endpoint // the endpoint record as it was
	prevKV   *store.KeyValue // and its revision (nil: absent)
	pools    []model.Pool
	recorded bool // the endpoint record was written with the allocation
}

// newEndpoint is the record of this attachment, addresses aside.
func (c *call) newEndpoint(mac net.HardwareAddr) *model.Endpoint {
	return &model.Endpoint{Host: c.Host, Orchestrator: c.wargs.Orchestrator, Workload: c.workload, Name: c.Args.IfName,
		ContainerID: c.Args.ContainerID, Network: c.Conf.Name, Netns: c.Args.Netns, IfName: c.Args.IfName, HostInterface: c.veth,
		MAC: mac.String(), Profiles: append(append([]string{}, c.Conf.Profiles...), c.wargs.Profiles...),
		Handle: model.HandleID(c.Conf.Name, c.Args.ContainerID)}
}

// setNets fills the endpoint's addresses (as /32 and /128).
func setNets(ep *model.Endpoint, ips []net.IP) []net.IPNet {
	addrs := ifaddr.Hosts(ips)
	ep.IPv4Nets, ep.IPv6Nets = ifaddr.Split(addrs)
	return addrs
}

// ipamAdd allocates the addresses and reads the endpoint record and pools.
// In process, the endpoint record (ep) commits in the allocation's own
// transaction: with a warm host cache the whole ADD is one etcd round trip.
func (c *call) ipamAdd(ctx context.Context, ep *model.Endpoint) (*ipamOutcome, error) {
	// The endpoint as it is, read with the allocation; in process the pools
	// come with the assigned addresses, delegated they are read here.
	pre := []store.Op{store.Get(c.epKey)}
	o := &ipamOutcome{}
	var gets [][]store.KeyValue
	if c.inProcessIPAM() {
		req := plugin.IPAMRequest(c.Conf, c.wargs, c.Args.ContainerID, c.Args.IfName)
		req.Also = func(rs *store.ReadSet, out []ipam.Assigned) ([]store.Op, error) {
			var prev model.Endpoint
			found, err := rs.Decode(c.epKey, &prev)
			if err != nil {
				return nil, err
			}
			var ips []net.IP
			for _, a := range out {
				ips = append(ips, a.IP)
			}
			next := *ep
			setNets(&next, ips)
			if !found {
				return workload.Ops(nil, &next), nil
			}
			return workload.Ops(&prev, &next), nil
		}
		r, err := c.ipam().AssignWith(ctx, req, pre)
		if err != nil {
			return nil, err
		}
		o.result, gets, o.recorded = plugin.IPAMResult(r.Assigned, false), r.Extras, r.Created
		for _, a := range r.Assigned {
			o.pools = append(o.pools, a.Pool)
		}
	} else {
		res, err := c.KV.Txn(ctx, nil, append(pre, store.Op{Kind: store.OpGet, Key: model.PoolPrefix, Prefix: true}))
		if err != nil {
			return nil, err
		}
		gets = res.Gets
		delegateEnv()
		raw, err := plugin.DelegateAdd(ctx, c.Conf.IPAM.Type, c.Args.StdinData)
		if err != nil {
			return nil, err
		}
		if o.result, err = current.NewResultFromResult(raw); err != nil {
			c.ipamDel(ctx)
			return nil, fmt.Errorf("IPAM %s result: %w", c.Conf.IPAM.Type, err)
		}
	}
	if len(gets) > 1 {
		for _, kv := range gets[1] {
			var p model.Pool
			if json.Unmarshal(kv.Value, &p) == nil {
				o.pools = append(o.pools, p)
			}
		}
	}
	if len(gets[0]) > 0 {
		o.prevKV = &gets[0][0]
		o.prev = &model.Endpoint{}
		if json.Unmarshal(o.prevKV.Value, o.prev) != nil {
			o.prev = nil
		}
	}
	return o, nil
}

// ipamDel releases this attachment's addresses.
func (c *call) ipamDel(ctx context.Context) error { return c.ipamVerb(ctx, ipamDEL) }

func (c *call) add(ctx context.Context) (res *current.Result, err error) {
	t0 := time.Now()
	mark := func(what string) { c.Log.Debug("ADD step", "step", what, "elapsed", time.Since(t0)) }
	c.mark = mark
	defer mark("done")
	// The container MAC is derived, not left to the kernel, so the endpoint
	// record can be written before the interface exists.
	mac := ifaddr.DeriveMAC("tabby-mac/" + c.Args.ContainerID + "/" + c.Args.IfName)
	ep := c.newEndpoint(mac)
	if err = c.identify(ctx, ep); err != nil {
		return nil, err
	}
	mark("identity")
	o, err := c.ipamAdd(ctx, ep)
	mark("ipam")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			// A fresh context: the ADD's own may be what ran out.
			rctx, rcancel := context.WithTimeout(context.Background(), plugin.Deadline)
			defer rcancel()
			if o.recorded {
				if _, derr := workload.Delete(rctx, c.KV, c.epKey, c.Args.ContainerID); derr != nil {
					c.Log.Error("rollback: delete endpoint", "err", derr)
				}
			}
			if derr := c.ipamDel(rctx); derr != nil {
				c.Log.Error("rollback: release addresses", "err", derr)
			}
		}
	}()
	// A repeated ADD for a container that has its interface is answered
	// from what is there (the IPAM call above returned the same addresses).
	if !o.recorded && o.prev != nil && o.prev.ContainerID == c.Args.ContainerID {
		if r, xerr := c.existing(o.prev); xerr == nil {
			c.Log.Info("ADD answered from the existing endpoint", "key", c.epKey)
			return r, nil
		}
	}
	if len(o.result.IPs) == 0 {
		return nil, fmt.Errorf("IPAM %s returned no address", c.Conf.IPAM.Type)
	}
	var ips []net.IP
	for _, ipc := range o.result.IPs {
		ips = append(ips, ipc.Address.IP)
	}
	addrs := setNets(ep, ips)
	encap := 0
	for _, a := range addrs {
		encap = max(encap, model.EncapOverhead(o.pools, a.IP))
	}
	mtu := c.Conf.MTU
	if mtu == 0 {
		mtu = uplinkMTU(c.Conf.State()) - encap
	}
	mark("mtu")
	if err = c.refuseUnenforceableV6(ctx, addrs); err != nil {
		return nil, err
	}
	dp, err := dataplane.Setup(dataplane.Config{NetnsPath: c.Args.Netns, IfName: c.Args.IfName, HostVeth: c.veth, MTU: mtu,
		Addrs: addrs, ContainerMAC: mac})
	mark("veth")
	if err != nil {
		return nil, classifyDataplane(err)
	}
	defer func() {
		if err != nil {
			if terr := dataplane.Teardown(c.Args.Netns, c.Args.IfName, c.veth); terr != nil {
				c.Log.Error("rollback: remove veth", "veth", c.veth, "err", terr)
			}
		}
	}()
	if !o.recorded {
		if err = workload.PutFrom(ctx, c.KV, ep, store.Seed{c.epKey: o.prevKV}); err != nil {
			return nil, fmt.Errorf("record endpoint %s: %w", c.epKey, err)
		}
		o.recorded = true
	}
	mark("endpoint")
	if err = c.waitPolicy(ctx, ep); err != nil {
		return nil, err
	}
	c.Log.Info("ADD", "workload", c.workload, "ifname", c.Args.IfName, "nets", ep.Nets(), "veth", c.veth)
	return c.result(dp, addrs), nil
}

func classifyDataplane(err error) error {
	switch {
	case errors.Is(err, dataplane.ErrContainerIfExists):
		return cnierr.New(cnierr.BadArgs, "%v; choose another CNI_IFNAME or remove the interface", err)
	case errors.Is(err, dataplane.ErrContainerNetns):
		return cnierr.New(cnierr.BadArgs, "%v; CNI_NETNS must name the container's network namespace", err)
	}
	return fmt.Errorf("set up veth: %w", err)
}

func (c *call) result(dp *dataplane.Result, addrs []net.IPNet) *current.Result {
	r := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	r.Interfaces = []*current.Interface{
		{Name: dp.HostVeth, Mac: dp.HostMAC.String()},
		{Name: c.Args.IfName, Mac: dp.ContainerMAC.String(), Sandbox: c.Args.Netns},
	}
	idx := 1
	has6 := false
	for _, a := range addrs {
		has6 = has6 || a.IP.To4() == nil
		r.IPs = append(r.IPs, &current.IPConfig{Interface: &idx, Address: a, Gateway: ifaddr.Gateway(a.IP)})
	}
	r.Routes = append(r.Routes, &types.Route{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: ifaddr.GatewayIPv4})
	if has6 {
		r.Routes = append(r.Routes, &types.Route{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, GW: ifaddr.GatewayIPv6})
	}
	return r
}

// existing answers a repeated ADD from the interface that is already there.
func (c *call) existing(ep *model.Endpoint) (*current.Result, error) {
	dp, addrs, err := dataplane.Inspect(c.Args.Netns, c.Args.IfName, c.veth)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("interface has no address")
	}
	return c.result(dp, addrs), nil
}

// cmdDel releases the addresses first, as ptp does: a teardown that fails
// (and is reported, so the runtime retries) must never leak an address.
var cmdDel = verb("DEL", plugin.Deadline, func(ctx context.Context, c *call) error {
	ours, err := c.releaseAndForget(ctx)
	if err != nil {
		return err
	}
	if !ours {
		return nil
	}
	if err := dataplane.Teardown(c.Args.Netns, c.Args.IfName, c.veth); err != nil {
		return fmt.Errorf("addresses released and endpoint record removed, but removing veth %s failed: %w", c.veth, err)
	}
	c.Log.Info("DEL", "workload", c.workload)
	return nil
})

// releaseAndForget releases the attachment's addresses and removes its
// endpoint record, and reports whether the interface is this container's
// to tear down. A record that names another container belongs to a newer
// sandbox with the same identity: its veth and record stay, only our
// addresses go. In process, both are one etcd transaction.
func (c *call) releaseAndForget(ctx context.Context) (ours bool, err error) {
	ours = true
	forget := func(rs *store.ReadSet) ([]store.Op, error) {
		ours = true
		var prev model.Endpoint
		found, err := rs.Decode(c.epKey, &prev)
		if err != nil || !found {
			return nil, err
		}
		if prev.ContainerID != c.Args.ContainerID {
			ours = false
			return nil, nil
		}
		return workload.Ops(&prev, nil), nil
	}
	if c.inProcessIPAM() {
		err = c.ipam().ReleaseWith(ctx, c.Conf.Name, c.Args.ContainerID, []string{c.epKey}, forget)
	} else {
		// The delegated IPAM first, as ptp does, then the record.
		if err = c.ipamDel(ctx); err == nil {
			_, err = store.ReadModifyWrite(ctx, c.KV, []string{c.epKey}, func(rs *store.ReadSet) ([]store.Op, error) {
				ops, err := forget(rs)
				if err == nil && len(ops) == 0 {
					return nil, store.ErrAbort
				}
				return ops, err
			})
		}
	}
	if !ours {
		c.Log.Info("DEL: endpoint belongs to another container now; released only addresses", "key", c.epKey)
	}
	return ours, err
}

var cmdCheck = verb("CHECK", plugin.Deadline, func(ctx context.Context, c *call) error {
	if len(c.Conf.PrevResult) == 0 {
		return &cnierr.Error{Code: cnierr.BadConfig, Msg: "CHECK needs prevResult in the configuration"}
	}
	prev, err := parsePrev(c.Conf)
	if err != nil {
		return err
	}
	var addrs []net.IPNet
	for _, ipc := range prev.IPs {
		addrs = append(addrs, ipc.Address)
	}
	var problems []string
	if err := dataplane.Check(dataplane.Config{NetnsPath: c.Args.Netns, IfName: c.Args.IfName, HostVeth: c.veth, Addrs: addrs}); err != nil {
		problems = append(problems, err.Error())
	}
	ep, err := workload.Get(ctx, c.KV, c.epKey)
	switch {
	case errors.Is(err, store.ErrNotFound):
		problems = append(problems, "no endpoint record at "+c.epKey)
	case err != nil:
		return err
	default:
		if ep.ContainerID != c.Args.ContainerID {
			problems = append(problems, fmt.Sprintf("endpoint record %s belongs to container %s", c.epKey, ep.ContainerID))
		}
		have := map[string]bool{}
		for _, n := range ep.Nets() {
			have[n] = true
		}
		for _, a := range addrs {
			if !have[a.String()] {
				problems = append(problems, fmt.Sprintf("endpoint record lacks address %s", a.String()))
			}
		}
	}
	if len(problems) > 0 {
		return cnierr.New(cnierr.Internal, "%s", strings.Join(problems, "; "))
	}
	delegateEnv()
	if err := c.ipamVerb(ctx, ipamCHECK); err != nil {
		return err
	}
	return nil
})

func parsePrev(conf *netconf.NetConf) (*current.Result, error) {
	r, err := current.NewResult(conf.PrevResult)
	if err != nil {
		// prevResult comes in the netconf's own version.
		var raw map[string]any
		_ = json.Unmarshal(conf.PrevResult, &raw)
		return nil, &cnierr.Error{Code: cnierr.BadConfig, Msg: "prevResult: " + err.Error()}
	}
	return current.NewResultFromResult(r)
}

// cmdGC removes this host's endpoints of this network that no valid
// attachment names, then lets the IPAM plugin release their addresses.
var cmdGC = verb("GC", 4*plugin.Deadline, func(ctx context.Context, c *call) error {
	valid := map[string]bool{}
	for _, v := range c.Conf.ValidAttachments {
		valid[v.ContainerID+"/"+v.IfName] = true
	}
	eps, err := store.ListJSON[model.Endpoint](ctx, c.KV, model.HostWorkloadPrefix(c.Host))
	if err != nil {
		return err
	}
	for _, ep := range eps {
		if ep.Network != c.Conf.Name || valid[ep.ContainerID+"/"+ep.IfName] {
			continue
		}
		if err := dataplane.Teardown(ep.Netns, ep.IfName, ep.HostInterface); err != nil {
			c.Log.Error("GC: remove veth", "veth", ep.HostInterface, "err", err)
		}
		if _, err := workload.Delete(ctx, c.KV, ep.Key(), ep.ContainerID); err != nil {
			return err
		}
		c.Log.Info("GC removed endpoint", "key", ep.Key())
	}
	return c.ipamVerb(ctx, ipamGC)
})

var cmdStatus = verb("STATUS", plugin.Deadline, func(ctx context.Context, c *call) error {
	if err := c.nodeReady(ctx); err != nil {
		return err
	}
	return c.ipamVerb(ctx, ipamSTATUS)
})

// uplinkMTU is what tabby-node measured and wrote to <state_dir>/mtu (as
// Calico's felix does), so an ADD does not dump every link and route of a
// busy host; without a node daemon, the plugin measures once and writes it.
func uplinkMTU(stateDir string) int {
	if b, err := os.ReadFile(filepath.Join(stateDir, "mtu")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n >= 576 {
			return n
		}
	}
	if n, err := dataplane.UplinkMTU(); err == nil {
		// Remember it for the next ADD (tabby-node rewrites the file when it
		// starts, so a changed uplink is picked up there).
		tmp := filepath.Join(stateDir, fmt.Sprintf(".mtu.%d", os.Getpid()))
		if os.WriteFile(tmp, []byte(strconv.Itoa(n)+"\n"), 0o600) == nil {
			_ = os.Rename(tmp, filepath.Join(stateDir, "mtu"))
		}
		_ = os.Remove(tmp) // torn by a full disk; gone after a rename
		return n
	}
	return 1500
}

// ipamCmd is a verb run on the IPAM after the ADD chose it: in process, or
// delegated to the ipam plugin.
type ipamCmd string

const (
	ipamDEL    ipamCmd = "DEL"
	ipamCHECK  ipamCmd = "CHECK"
	ipamGC     ipamCmd = "GC"
	ipamSTATUS ipamCmd = "STATUS"
)

// ipamVerb runs cmd on the IPAM, in process or delegated, as the ADD did.
func (c *call) ipamVerb(ctx context.Context, cmd ipamCmd) error {
	if !c.inProcessIPAM() {
		delegateEnv()
		_, err := plugin.Delegate(ctx, string(cmd), c.Conf.IPAM.Type, c.Args.StdinData)
		return err
	}
	switch cmd {
	case ipamDEL:
		return c.ipam().Release(ctx, c.Conf.Name, c.Args.ContainerID)
	case ipamCHECK:
		return ipam.CheckHandle(ctx, c.KV, c.Conf.Name, c.Args.ContainerID)
	case ipamGC:
		_, err := c.ipam().GC(ctx, c.Conf.Name, plugin.GCAttachments(c.Conf))
		return err
	case ipamSTATUS:
		return plugin.IPAMStatus(ctx, c.KV, c.Conf)
	}
	return fmt.Errorf("IPAM verb %q unknown", cmd)
}
