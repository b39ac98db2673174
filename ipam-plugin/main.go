// tabby-ipam is the CNI IPAM plugin: addresses from etcd pools in host-affine
// blocks. It works under tabby and under other main plugins (ptp, bridge).
package main

import (
	"context"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/netconf"
	"github.com/tabby-net/tabby/pkg/plugin"
)

// Version is set at build time.
var Version = "dev"

func main() {
	plugin.Main(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus}, "tabby-ipam "+Version)
}

type env struct {
	*plugin.Env
	ipam *ipam.IPAM
}

func open(e *plugin.Env) (*env, error) {
	return &env{Env: e, ipam: &ipam.IPAM{KV: e.KV, Host: e.Host, LockDir: e.Conf.State()}}, nil
}

func verb(name string, d time.Duration, fn func(context.Context, *env) error) func(*skel.CmdArgs) error {
	return plugin.Verb("tabby-ipam", name, d, open, fn)
}

var (
	cmdAdd = verb("ADD", plugin.Deadline, func(ctx context.Context, e *env) error {
		a, err := netconf.ParseArgs(e.Args.Args, e.Conf)
		if err != nil {
			return err
		}
		_, out, err := e.ipam.Assign(ctx, plugin.IPAMRequest(e.Conf, a, e.Args.ContainerID, e.Args.IfName))
		if err != nil {
			return err
		}
		res := plugin.IPAMResult(out, e.Conf.BlockResult())
		res.CNIVersion = e.Conf.CNIVersion
		e.Log.Info("ADD", "ips", ipsOf(out))
		return types.PrintResult(res, e.Conf.CNIVersion)
	})
	cmdDel = verb("DEL", plugin.Deadline, func(ctx context.Context, e *env) error {
		if err := e.ipam.Release(ctx, e.Conf.Name, e.Args.ContainerID); err != nil {
			return err
		}
		e.Log.Info("DEL")
		return nil
	})
	// CHECK verifies that the handle still holds every address it was given.
	cmdCheck = verb("CHECK", plugin.Deadline, func(ctx context.Context, e *env) error {
		return ipam.CheckHandle(ctx, e.KV, e.Conf.Name, e.Args.ContainerID)
	})
	cmdGC = verb("GC", 4*plugin.Deadline, func(ctx context.Context, e *env) error {
		rel, err := e.ipam.GC(ctx, e.Conf.Name, plugin.GCAttachments(e.Conf))
		e.Log.Info("GC", "released", rel)
		return err
	})
	cmdStatus = verb("STATUS", plugin.Deadline, func(ctx context.Context, e *env) error {
		return plugin.IPAMStatus(ctx, e.KV, e.Conf)
	})
)

func ipsOf(out []ipam.Assigned) []string {
	var s []string
	for _, a := range out {
		s = append(s, a.IP.String())
	}
	return s
}
