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

// verb wraps one CNI verb: parse, connect, bound the datastore work by a
// deadline, log failures, and answer with the CNI error object.
func verb(name string, d time.Duration, fn func(ctx context.Context, e *env, args *skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		e, err := setup(args)
		if err != nil {
			return plugin.ToCNI(err)
		}
		defer e.close()
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		if err := fn(ctx, e, args); err != nil {
			e.log.Errorf("%s: %v", name, err)
			return plugin.ToCNI(err)
		}
		return nil
	}
}

var (
	cmdAdd = verb("ADD", plugin.Deadline, func(ctx context.Context, e *env, args *skel.CmdArgs) error {
		a, err := netconf.ParseArgs(args.Args, e.conf)
		if err != nil {
			return err
		}
		_, out, err := e.ipam.Assign(ctx, plugin.IPAMRequest(e.conf, a, args.ContainerID, args.IfName))
		if err != nil {
			return err
		}
		res := plugin.IPAMResult(out, e.conf.IPAM.Result == "block")
		res.CNIVersion = e.conf.CNIVersion
		e.log.Infof("ADD %s: %v", args.ContainerID, ipsOf(out))
		return types.PrintResult(res, e.conf.CNIVersion)
	})
	cmdDel = verb("DEL", plugin.Deadline, func(ctx context.Context, e *env, args *skel.CmdArgs) error {
		if err := e.ipam.Release(ctx, e.conf.Name, args.ContainerID); err != nil {
			return err
		}
		e.log.Infof("DEL %s", args.ContainerID)
		return nil
	})
	// CHECK verifies that the handle still holds every address it was given.
	cmdCheck = verb("CHECK", plugin.Deadline, func(ctx context.Context, e *env, args *skel.CmdArgs) error {
		return ipam.CheckHandle(ctx, e.kv, e.conf.Name, args.ContainerID)
	})
	cmdGC = verb("GC", 4*plugin.Deadline, func(ctx context.Context, e *env, args *skel.CmdArgs) error {
		rel, err := e.ipam.GC(ctx, e.conf.Name, plugin.GCAttachments(e.conf))
		e.log.Infof("GC released %v", rel)
		return err
	})
	cmdStatus = verb("STATUS", plugin.Deadline, func(ctx context.Context, e *env, args *skel.CmdArgs) error {
		return plugin.IPAMStatus(ctx, e.kv, e.conf)
	})
)

func ipsOf(out []ipam.Assigned) []string {
	var s []string
	for _, a := range out {
		s = append(s, a.IP.String())
	}
	return s
}
