// Package plugin holds what both CNI plugins share: the error mapping to CNI
// codes, the datastore client and the log file. It stays small on purpose:
// its imports are the plugins' start-up time.
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/ifaddr"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/netconf"
	"github.com/tabby-net/tabby/pkg/store"
)

// Deadline bounds one plugin call's datastore work, so an unreachable etcd
// gives code 11 within seconds instead of hanging the runtime.
const Deadline = 4500 * time.Millisecond

// ToCNI turns any error into the CNI error object with the right code.
func ToCNI(err error) *types.Error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	if c := cnierr.CodeOf(err); c != 0 {
		return types.NewError(uint(c), err.Error(), "")
	}
	if store.IsNoSpace(err) {
		return types.NewError(uint(cnierr.TryAgain), err.Error(), "try again once etcd has space")
	}
	if store.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) {
		return types.NewError(uint(cnierr.TryAgain), err.Error(), "try again when etcd is reachable")
	}
	if errors.Is(err, store.ErrConflict) {
		return types.NewError(uint(cnierr.TryAgain), err.Error(), "")
	}
	if errors.Is(err, store.ErrFormat) {
		return types.NewError(uint(cnierr.DatastoreFormat), err.Error(), "")
	}
	return types.NewError(uint(cnierr.Internal), err.Error(), "")
}

// OpenKV connects to etcd as the netconf says.
func OpenKV(c *netconf.NetConf) (store.KV, error) {
	e := c.EtcdConfig()
	kv, err := store.NewGRPC(store.Config{Endpoints: e.EndpointList(), CAFile: e.CACertFile, CertFile: e.CertFile, KeyFile: e.KeyFile})
	if err != nil {
		return nil, cnierr.New(cnierr.BadConfig, "etcd settings: %v", err)
	}
	return kv, nil
}

// Env is what every verb of either plugin starts from: the parsed network
// configuration, this host's name, the datastore and the log.
type Env struct {
	Args *skel.CmdArgs
	Conf *netconf.NetConf
	Host string
	KV   store.KV
	Log  *slog.Logger
	logf *os.File
}

// Open parses stdin and connects to etcd.
func Open(args *skel.CmdArgs, plugin string) (*Env, error) {
	c, err := netconf.Parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	host, err := c.Node()
	var nn *netconf.NoNodenameError
	if errors.As(err, &nn) {
		// tabby-node is starting (or down): the runtime retries.
		return nil, cnierr.New(cnierr.TryAgain, "%v", err)
	}
	if err != nil {
		return nil, cnierr.New(cnierr.BadConfig, "%v", err)
	}
	kv, err := OpenKV(c)
	if err != nil {
		return nil, err
	}
	e := &Env{Args: args, Conf: c, Host: host, KV: kv}
	e.Log, e.logf = NewLogger(c.LogFile, c.LogLevel)
	e.Log = e.Log.With("plugin", plugin, "container", args.ContainerID)
	return e, nil
}

// Close releases the connection and the log file.
func (e *Env) Close() {
	e.KV.Close()
	if e.logf != nil {
		e.logf.Close()
	}
}

// Verb wraps one CNI verb for a plugin whose per-call state C is made from
// the Env by open: parse and connect, bound the datastore work by a
// deadline, log a failure, and answer with the CNI error object.
func Verb[C any](plugin, name string, d time.Duration, open func(*Env) (C, error), fn func(context.Context, C) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		e, err := Open(args, plugin)
		if err != nil {
			return ToCNI(err)
		}
		defer e.Close()
		c, err := open(e)
		if err != nil {
			return ToCNI(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		if err := fn(ctx, c); err != nil {
			e.Log.Error(name+" failed", "err", err)
			return ToCNI(err)
		}
		return nil
	}
}

// NewLogger writes to the netconf's log_file (netconf.Parse has made sure
// the path is absolute); plugins must never log to stdout, which carries
// the result. A log that cannot be opened is dropped, never fatal.
func NewLogger(path, level string) (*slog.Logger, *os.File) {
	var lv slog.Level
	if lv.UnmarshalText([]byte(level)) != nil {
		lv = slog.LevelInfo
	}
	if path == "" {
		return slog.New(slog.DiscardHandler), nil
	}
	// Root's alone: the log names every workload, address and netns.
	_ = os.MkdirAll(filepath.Dir(path), 0o700)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return slog.New(slog.DiscardHandler), nil
	}
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: lv})), f
}

// Main runs a plugin's verbs through skel. It first makes sure stdin is a JSON
// object, because skel would answer malformed JSON with the CNI spec's code 6,
// and tabby answers a bad configuration with code 4 (pkg/cnierr).
func Main(funcs skel.CNIFuncs, about string) {
	if cmd := os.Getenv("CNI_COMMAND"); cmd != "" && cmd != "VERSION" {
		data, err := io.ReadAll(os.Stdin)
		var obj map[string]json.RawMessage
		if err == nil {
			err = json.Unmarshal(data, &obj)
		}
		if err != nil {
			e := types.NewError(uint(cnierr.BadConfig), "network configuration on stdin is not a JSON object: "+err.Error(), "")
			_ = e.Print()
			os.Exit(1)
		}
		r, w, perr := os.Pipe()
		if perr == nil {
			go func() { w.Write(data); w.Close() }()
			os.Stdin = r
		}
	}
	skel.PluginMainFuncs(funcs, version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"), about)
}

// IPAMRequest builds the IPAM request of one attachment from its netconf and
// arguments; tabby-ipam and tabby's in-process IPAM use the same one, so the
// two paths cannot drift apart.
func IPAMRequest(c *netconf.NetConf, a *netconf.Args, containerID, ifName string) ipam.Request {
	wl := a.Workload
	if wl == "" {
		wl = containerID
	}
	return ipam.Request{
		Network: c.Name, ContainerID: containerID, IfName: ifName, Workload: wl, Plugin: c.Type,
		IPv4: c.AssignV4(), IPv6: c.IPAM.AssignIPv6, Pools4: c.IPAM.IPv4Pools, Pools6: c.IPAM.IPv6Pools,
		Static: a.IPs, StrictAffinity: c.IPAM.StrictAffinity, GatewayFirst: c.BlockResult(),
	}
}

// IPAMResult builds the CNI result of an allocation: /32 and /128 with the
// link-local gateway, or (block) the block prefix with the block's first
// address as the gateway, for ptp and bridge.
func IPAMResult(out []ipam.Assigned, block bool) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	for _, as := range out {
		addr, gw := ifaddr.Host(as.IP), ifaddr.Gateway(as.IP)
		if block {
			addr, gw = net.IPNet{IP: as.IP, Mask: as.Block.Mask}, as.Block.IP
		}
		def := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if as.IP.To4() == nil {
			def = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		res.Routes = append(res.Routes, &types.Route{Dst: def})
		res.IPs = append(res.IPs, &current.IPConfig{Address: addr, Gateway: gw})
	}
	return res
}

// IPAMStatus is the STATUS check of tabby's IPAM: etcd answers and every
// family the network assigns has a pool with room.
func IPAMStatus(ctx context.Context, kv store.KV, c *netconf.NetConf) error {
	if c.AssignV4() {
		if err := ipam.HasRoom(ctx, kv, false, c.IPAM.IPv4Pools); err != nil {
			return err
		}
	}
	if c.IPAM.AssignIPv6 {
		return ipam.HasRoom(ctx, kv, true, c.IPAM.IPv6Pools)
	}
	return nil
}

// GCAttachments lists the netconf's valid attachments for IPAM GC.
func GCAttachments(c *netconf.NetConf) []ipam.Attachment {
	var valid []ipam.Attachment
	for _, v := range c.ValidAttachments {
		valid = append(valid, ipam.Attachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	return valid
}
