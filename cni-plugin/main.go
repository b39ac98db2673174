// tabby is the CNI plugin: a veth into the container with /32 and /128
// addresses behind a link-local gateway on a routed host, the endpoint record
// in etcd, and (with tabby-node) policy in force before ADD returns.
package main

import (
	"context"
	"crypto/sha256"
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

	"github.com/tabby-net/tabby/pkg/dataplane"
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
	args     *skel.CmdArgs
	conf     *netconf.NetConf
	wargs    *netconf.Args
	host     string
	kv       store.KV
	log      *plugin.Logger
	workload string
	epKey    string
	veth     string
}

func newCall(args *skel.CmdArgs) (*call, error) {
	c, err := netconf.Parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	if c.IPAM.Type == "" {
		return nil, &netconf.Error{Code: netconf.CodeBadConfig, Msg: "network configuration has no ipam type; use \"tabby-ipam\" (or host-local)"}
	}
	wa, err := netconf.ParseArgs(args.Args, c)
	if err != nil {
		return nil, err
	}
	host, err := c.Node()
	if err != nil {
		return nil, &netconf.Error{Code: netconf.CodeBadConfig, Msg: err.Error()}
	}
	kv, err := plugin.OpenKV(c)
	if err != nil {
		return nil, err
	}
	wl := wa.Workload
	if wl == "" {
		wl = args.ContainerID
	}
	// GC and STATUS come without a container (skel requires one for ADD,
	// DEL and CHECK).
	if wl != "" {
		if err := model.ValidName(wl); err != nil {
			kv.Close()
			return nil, &netconf.Error{Code: netconf.CodeBadArgs, Msg: "container ID: " + err.Error()}
		}
	}
	return &call{
		args: args, conf: c, wargs: wa, host: host, kv: kv, workload: wl,
		log:   plugin.NewLogger(c.LogFile, c.LogLevel, "tabby "+args.ContainerID),
		epKey: model.EndpointKey(host, wa.Orchestrator, wl, args.IfName),
		veth:  dataplane.HostVethName(wa.Orchestrator + "/" + wl + "/" + args.IfName),
	}, nil
}

func (c *call) close() { c.kv.Close(); c.log.Close() }

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

// verb wraps one CNI verb: parse and connect, bound the datastore work by a
// deadline, log a failure, and answer with the CNI error object.
func verb(name string, d time.Duration, fn func(ctx context.Context, c *call, args *skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		c, err := newCall(args)
		if err != nil {
			return plugin.ToCNI(err)
		}
		defer c.close()
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		if err := fn(ctx, c, args); err != nil {
			c.log.Errorf("%s: %v", name, err)
			return plugin.ToCNI(err)
		}
		return nil
	}
}

var cmdAdd = verb("ADD", plugin.Deadline, func(ctx context.Context, c *call, args *skel.CmdArgs) error {
	res, err := c.add(ctx)
	if err != nil {
		return err
	}
	return types.PrintResult(res, c.conf.CNIVersion)
})

// inProcessIPAM: with tabby-ipam as the IPAM, tabby runs the same IPAM code
// itself instead of exec'ing it (one process start and one etcd connection
// less per ADD, and the endpoint and pool reads ride in IPAM's first round
// trip). "ipam_exec": true restores plain delegation.
func (c *call) inProcessIPAM() bool { return c.conf.IPAM.Type == "tabby-ipam" && !c.conf.IPAMExec }

func (c *call) ipam() *ipam.IPAM {
	return &ipam.IPAM{KV: c.kv, Host: c.host, LockDir: c.conf.State()}
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
	return &model.Endpoint{Host: c.host, Orchestrator: c.wargs.Orchestrator, Workload: c.workload, Name: c.args.IfName,
		ContainerID: c.args.ContainerID, Network: c.conf.Name, Netns: c.args.Netns, IfName: c.args.IfName, HostInterface: c.veth,
		MAC: mac.String(), Profiles: append(append([]string{}, c.conf.Profiles...), c.wargs.Profiles...),
		Handle: model.HandleID(c.conf.Name, c.args.ContainerID)}
}

// setNets fills the endpoint's addresses (as /32 and /128).
func setNets(ep *model.Endpoint, ips []net.IP) []net.IPNet {
	ep.IPv4Nets, ep.IPv6Nets = nil, nil
	var addrs []net.IPNet
	for _, ip := range ips {
		n := net.IPNet{IP: ip, Mask: net.CIDRMask(128, 128)}
		if v4 := ip.To4(); v4 != nil {
			n = net.IPNet{IP: v4, Mask: net.CIDRMask(32, 32)}
			ep.IPv4Nets = append(ep.IPv4Nets, n.String())
		} else {
			ep.IPv6Nets = append(ep.IPv6Nets, n.String())
		}
		addrs = append(addrs, n)
	}
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
		req := plugin.IPAMRequest(c.conf, c.wargs, c.args.ContainerID, c.args.IfName)
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
		res, err := c.kv.Txn(ctx, nil, append(pre, store.Op{Kind: store.OpGet, Key: model.PoolPrefix, Prefix: true}))
		if err != nil {
			return nil, err
		}
		gets = res.Gets
		delegateEnv()
		raw, err := plugin.DelegateAdd(ctx, c.conf.IPAM.Type, c.args.StdinData)
		if err != nil {
			return nil, err
		}
		if o.result, err = current.NewResultFromResult(raw); err != nil {
			c.ipamDel(ctx)
			return nil, fmt.Errorf("IPAM %s result: %w", c.conf.IPAM.Type, err)
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
func (c *call) ipamDel(ctx context.Context) error {
	if c.inProcessIPAM() {
		return c.ipam().Release(ctx, c.conf.Name, c.args.ContainerID)
	}
	delegateEnv()
	return delegateErr(ctx, "DEL", c.conf.IPAM.Type, c.args.StdinData)
}

func (c *call) add(ctx context.Context) (res *current.Result, err error) {
	t0 := time.Now()
	mark := func(what string) { c.log.Debugf("ADD %s at %v", what, time.Since(t0)) }
	defer mark("done")
	// The container MAC is derived, not left to the kernel, so the endpoint
	// record can be written before the interface exists.
	mac := containerMAC(c.args.ContainerID, c.args.IfName)
	ep := c.newEndpoint(mac)
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
				if _, derr := workload.Delete(rctx, c.kv, c.epKey, c.args.ContainerID); derr != nil {
					c.log.Errorf("rollback: delete endpoint: %v", derr)
				}
			}
			if derr := c.ipamDel(rctx); derr != nil {
				c.log.Errorf("rollback: release addresses: %v", derr)
			}
		}
	}()
	// A repeated ADD for a container that has its interface is answered
	// from what is there (the IPAM call above returned the same addresses).
	if !o.recorded && o.prev != nil && o.prev.ContainerID == c.args.ContainerID {
		if r, xerr := c.existing(o.prev); xerr == nil {
			c.log.Infof("ADD answered from the existing endpoint %s", c.epKey)
			return r, nil
		}
	}
	if len(o.result.IPs) == 0 {
		return nil, fmt.Errorf("IPAM %s returned no address", c.conf.IPAM.Type)
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
	mtu := c.conf.MTU
	if mtu == 0 {
		mtu = uplinkMTU(c.conf.State()) - encap
	}
	mark("mtu")
	dp, err := dataplane.Setup(dataplane.Config{NetnsPath: c.args.Netns, IfName: c.args.IfName, HostVeth: c.veth, MTU: mtu,
		Addrs: addrs, ContainerMAC: mac})
	mark("veth")
	if err != nil {
		return nil, classifyDataplane(err)
	}
	defer func() {
		if err != nil {
			if terr := dataplane.Teardown(c.args.Netns, c.args.IfName, c.veth); terr != nil {
				c.log.Errorf("rollback: remove veth %s: %v", c.veth, terr)
			}
		}
	}()
	if !o.recorded {
		if err = workload.PutFrom(ctx, c.kv, ep, store.Seed{c.epKey: o.prevKV}); err != nil {
			return nil, fmt.Errorf("record endpoint %s: %w", c.epKey, err)
		}
		o.recorded = true
	}
	mark("endpoint")
	if err = c.waitPolicy(ctx, ep); err != nil {
		return nil, err
	}
	c.log.Infof("ADD %s: %s %v via %s", c.workload, c.args.IfName, ep.Nets(), c.veth)
	return c.result(dp, addrs), nil
}

// containerMAC is a stable locally administered unicast MAC per attachment.
func containerMAC(containerID, ifName string) net.HardwareAddr {
	h := sha256.Sum256([]byte("tabby-mac/" + containerID + "/" + ifName))
	mac := net.HardwareAddr(h[:6])
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac
}

func classifyDataplane(err error) error {
	if errors.Is(err, dataplane.ErrContainerIfExists) {
		return &netconf.Error{Code: netconf.CodeBadArgs, Msg: err.Error() + "; choose another CNI_IFNAME or remove the interface"}
	}
	if strings.Contains(err.Error(), "no such file") || strings.Contains(err.Error(), "netns") {
		return &netconf.Error{Code: netconf.CodeBadArgs, Msg: "container network namespace: " + err.Error()}
	}
	return fmt.Errorf("set up veth: %w", err)
}

func (c *call) result(dp *dataplane.Result, addrs []net.IPNet) *current.Result {
	r := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	r.Interfaces = []*current.Interface{
		{Name: dp.HostVeth, Mac: dp.HostMAC.String()},
		{Name: c.args.IfName, Mac: dp.ContainerMAC.String(), Sandbox: c.args.Netns},
	}
	idx := 1
	has6 := false
	for _, a := range addrs {
		gw := dataplane.GatewayIPv4
		if a.IP.To4() == nil {
			gw, has6 = dataplane.GatewayIPv6, true
		}
		r.IPs = append(r.IPs, &current.IPConfig{Interface: &idx, Address: a, Gateway: gw})
	}
	r.Routes = append(r.Routes, &types.Route{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: dataplane.GatewayIPv4})
	if has6 {
		r.Routes = append(r.Routes, &types.Route{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, GW: dataplane.GatewayIPv6})
	}
	return r
}

// existing answers a repeated ADD from the interface that is already there.
func (c *call) existing(ep *model.Endpoint) (*current.Result, error) {
	dp, addrs, err := dataplane.Inspect(c.args.Netns, c.args.IfName, c.veth)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("interface has no address")
	}
	return c.result(dp, addrs), nil
}

var cmdDel = verb("DEL", plugin.Deadline, func(ctx context.Context, c *call, args *skel.CmdArgs) error {
	// A record that names another container belongs to a newer sandbox with
	// the same identity: leave its veth and record alone, release only ours.
	ep, err := workload.Get(ctx, c.kv, c.epKey)
	switch {
	case err == nil && ep.ContainerID != args.ContainerID:
		c.log.Infof("DEL: endpoint %s belongs to container %s now; releasing only addresses", c.epKey, ep.ContainerID)
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return err
	default:
		if err := dataplane.Teardown(args.Netns, args.IfName, c.veth); err != nil {
			return fmt.Errorf("remove veth %s: %w", c.veth, err)
		}
		if _, err := workload.Delete(ctx, c.kv, c.epKey, args.ContainerID); err != nil {
			return err
		}
	}
	if err := c.ipamDel(ctx); err != nil {
		return err
	}
	c.log.Infof("DEL %s", c.workload)
	return nil
})

var cmdCheck = verb("CHECK", plugin.Deadline, func(ctx context.Context, c *call, args *skel.CmdArgs) error {
	if len(c.conf.PrevResult) == 0 {
		return &netconf.Error{Code: netconf.CodeBadConfig, Msg: "CHECK needs prevResult in the configuration"}
	}
	prev, err := parsePrev(c.conf)
	if err != nil {
		return err
	}
	var addrs []net.IPNet
	for _, ipc := range prev.IPs {
		addrs = append(addrs, ipc.Address)
	}
	var problems []string
	if err := dataplane.Check(dataplane.Config{NetnsPath: args.Netns, IfName: args.IfName, HostVeth: c.veth, Addrs: addrs}); err != nil {
		problems = append(problems, err.Error())
	}
	ep, err := workload.Get(ctx, c.kv, c.epKey)
	switch {
	case errors.Is(err, store.ErrNotFound):
		problems = append(problems, "no endpoint record at "+c.epKey)
	case err != nil:
		return err
	default:
		if ep.ContainerID != args.ContainerID {
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
		return types.NewError(types.ErrInternal, strings.Join(problems, "; "), "")
	}
	delegateEnv()
	if err := c.ipamVerb(ctx, "CHECK"); err != nil {
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
		return nil, &netconf.Error{Code: netconf.CodeBadConfig, Msg: "prevResult: " + err.Error()}
	}
	return current.NewResultFromResult(r)
}

// cmdGC removes this host's endpoints of this network that no valid
// attachment names, then lets the IPAM plugin release their addresses.
var cmdGC = verb("GC", 4*plugin.Deadline, func(ctx context.Context, c *call, args *skel.CmdArgs) error {
	valid := map[string]bool{}
	for _, v := range c.conf.ValidAttachments {
		valid[v.ContainerID+"/"+v.IfName] = true
	}
	eps, err := store.ListJSON[model.Endpoint](ctx, c.kv, model.HostWorkloadPrefix(c.host))
	if err != nil {
		return err
	}
	for _, ep := range eps {
		if ep.Network != c.conf.Name || valid[ep.ContainerID+"/"+ep.IfName] {
			continue
		}
		if err := dataplane.Teardown(ep.Netns, ep.IfName, ep.HostInterface); err != nil {
			c.log.Errorf("GC: remove veth %s: %v", ep.HostInterface, err)
		}
		if _, err := workload.Delete(ctx, c.kv, ep.Key(), ep.ContainerID); err != nil {
			return err
		}
		c.log.Infof("GC removed endpoint %s", ep.Key())
	}
	return c.ipamVerb(ctx, "GC")
})

var cmdStatus = verb("STATUS", plugin.Deadline, func(ctx context.Context, c *call, args *skel.CmdArgs) error {
	if err := c.nodeReady(ctx); err != nil {
		return err
	}
	return c.ipamVerb(ctx, "STATUS")
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
		if os.WriteFile(tmp, []byte(strconv.Itoa(n)+"\n"), 0o644) == nil {
			_ = os.Rename(tmp, filepath.Join(stateDir, "mtu"))
		}
		return n
	}
	return 1500
}

func delegateErr(ctx context.Context, command, pluginType string, stdin []byte) error {
	_, err := plugin.Delegate(ctx, command, pluginType, stdin)
	return err
}

// ipamVerb runs CHECK, GC or STATUS on the IPAM, in process or delegated,
// as the ADD did.
func (c *call) ipamVerb(ctx context.Context, verb string) error {
	if !c.inProcessIPAM() {
		delegateEnv()
		return delegateErr(ctx, verb, c.conf.IPAM.Type, c.args.StdinData)
	}
	switch verb {
	case "CHECK":
		return ipam.CheckHandle(ctx, c.kv, c.conf.Name, c.args.ContainerID)
	case "GC":
		_, err := c.ipam().GC(ctx, c.conf.Name, plugin.GCAttachments(c.conf))
		return err
	default:
		return plugin.IPAMStatus(ctx, c.kv, c.conf)
	}
}
