// tabby-ipam is the CNI IPAM plugin: addresses from etcd pools in host-affine
// blocks. It works under tabby and under other main plugins (ptp, bridge).
package main

import (
	"context"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/netconf"
	"github.com/tabby-net/tabby/pkg/plugin"
	"github.com/tabby-net/tabby/pkg/store"
)

// Version is set at build time.
var Version = "dev"

func main() {
	plugin.Main(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus}, "tabby-ipam "+Version)
}

type env struct {
	conf *netconf.NetConf
	kv   store.KV
	ipam *ipam.IPAM
	log  *plugin.Logger
}

func setup(args *skel.CmdArgs) (*env, error) {
	c, err := netconf.Parse(args.StdinData)
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
	return &env{conf: c, kv: kv, ipam: &ipam.IPAM{KV: kv, Host: host, LockDir: c.State()},
		log: plugin.NewLogger(c.LogFile, c.LogLevel, "tabby-ipam "+args.ContainerID)}, nil
}

func (e *env) close() { e.kv.Close(); e.log.Close() }

func cmdAdd(args *skel.CmdArgs) (err error) {
	e, err := setup(args)
	if err != nil {
		return plugin.ToCNI(err)
	}
	defer e.close()
	a, err := netconf.ParseArgs(args.Args, e.conf)
	if err != nil {
		return plugin.ToCNI(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), plugin.Deadline)
	defer cancel()
	_, out, err := e.ipam.Assign(ctx, plugin.IPAMRequest(e.conf, a, args.ContainerID, args.IfName))
	if err != nil {
		e.log.Errorf("ADD: %v", err)
		return plugin.ToCNI(err)
	}
	res := plugin.IPAMResult(out, e.conf.IPAM.Result == "block")
	res.CNIVersion = e.conf.CNIVersion
	e.log.Infof("ADD %s: %v", args.ContainerID, ipsOf(out))
	return types.PrintResult(res, e.conf.CNIVersion)
}

func ipsOf(out []ipam.Assigned) []string {
	var s []string
	for _, a := range out {
		s = append(s, a.IP.String())
	}
	return s
}

func cmdDel(args *skel.CmdArgs) error {
	e, err := setup(args)
	if err != nil {
		return plugin.ToCNI(err)
	}
	defer e.close()
	ctx, cancel := context.WithTimeout(context.Background(), plugin.Deadline)
	defer cancel()
	if err := e.ipam.Release(ctx, e.conf.Name, args.ContainerID); err != nil {
		e.log.Errorf("DEL: %v", err)
		return plugin.ToCNI(err)
	}
	e.log.Infof("DEL %s", args.ContainerID)
	return nil
}

// cmdCheck verifies that the handle still holds every address it was given.
func cmdCheck(args *skel.CmdArgs) error {
	e, err := setup(args)
	if err != nil {
		return plugin.ToCNI(err)
	}
	defer e.close()
	ctx, cancel := context.WithTimeout(context.Background(), plugin.Deadline)
	defer cancel()
	return plugin.ToCNI(ipam.CheckHandle(ctx, e.kv, e.conf.Name, args.ContainerID))
}

func cmdGC(args *skel.CmdArgs) error {
	e, err := setup(args)
	if err != nil {
		return plugin.ToCNI(err)
	}
	defer e.close()
	ctx, cancel := context.WithTimeout(context.Background(), 4*plugin.Deadline)
	defer cancel()
	rel, err := e.ipam.GC(ctx, e.conf.Name, plugin.GCAttachments(e.conf))
	e.log.Infof("GC released %v", rel)
	return plugin.ToCNI(err)
}

func cmdStatus(args *skel.CmdArgs) error {
	e, err := setup(args)
	if err != nil {
		return plugin.ToCNI(err)
	}
	defer e.close()
	ctx, cancel := context.WithTimeout(context.Background(), plugin.Deadline)
	defer cancel()
	return plugin.ToCNI(plugin.IPAMStatus(ctx, e.kv, e.conf))
}
