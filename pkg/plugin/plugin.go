// Package plugin holds what both CNI plugins share: the error mapping to CNI
// codes, the datastore client and the log file. It stays small on purpose:
// its imports are the plugins' start-up time.
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/netconf"
	"github.com/tabby-net/tabby/pkg/store"
)

// CodeInternal is tabby's code for an unexpected failure.
const CodeInternal = 100

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
	var ne *netconf.Error
	if errors.As(err, &ne) {
		return types.NewError(uint(ne.Code), ne.Msg, "")
	}
	if c := ipam.CodeOf(err); c != 0 {
		return types.NewError(uint(c), err.Error(), "")
	}
	if store.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) {
		return types.NewError(netconf.CodeTryAgain, err.Error(), "try again when etcd is reachable")
	}
	if errors.Is(err, store.ErrConflict) {
		return types.NewError(netconf.CodeTryAgain, err.Error(), "")
	}
	return types.NewError(CodeInternal, err.Error(), "")
}

// OpenKV connects to etcd as the netconf says.
func OpenKV(c *netconf.NetConf) (store.KV, error) {
	e := c.EtcdConfig()
	kv, err := store.NewHTTP(store.Config{Endpoints: e.EndpointList(), CAFile: e.CACertFile, CertFile: e.CertFile, KeyFile: e.KeyFile})
	if err != nil {
		return nil, &netconf.Error{Code: netconf.CodeBadConfig, Msg: "etcd settings: " + err.Error()}
	}
	return kv, nil
}

// Logger appends to the netconf's log_file; plugins must never write logs to
// stdout, which carries the result.
type Logger struct {
	f     *os.File
	debug bool
	pre   string
}

// NewLogger opens path; a log that cannot be opened is dropped, never fatal.
func NewLogger(path, level, prefix string) *Logger {
	l := &Logger{debug: strings.EqualFold(level, "debug"), pre: prefix}
	if path == "" {
		return l
	}
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	l.f, _ = os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	return l
}

func (l *Logger) write(level, format string, a ...any) {
	if l == nil || l.f == nil {
		return
	}
	fmt.Fprintf(l.f, "%s %s %s %s\n", time.Now().Format(time.RFC3339Nano), level, l.pre, fmt.Sprintf(format, a...))
}

// Infof logs at info level.
func (l *Logger) Infof(format string, a ...any) { l.write("info", format, a...) }

// Errorf logs at error level.
func (l *Logger) Errorf(format string, a ...any) { l.write("error", format, a...) }

// Debugf logs only at debug level.
func (l *Logger) Debugf(format string, a ...any) {
	if l != nil && l.debug {
		l.write("debug", format, a...)
	}
}

// Close closes the log file.
func (l *Logger) Close() {
	if l != nil && l.f != nil {
		l.f.Close()
	}
}

// Main runs a plugin's verbs through skel. It first makes sure stdin is a JSON
// object, because skel would answer malformed JSON with the CNI spec's code 6,
// and tabby's contract (SPEC.md) promises code 4 for a bad configuration.
func Main(funcs skel.CNIFuncs, about string) {
	if cmd := os.Getenv("CNI_COMMAND"); cmd != "" && cmd != "VERSION" {
		data, err := io.ReadAll(os.Stdin)
		var obj map[string]json.RawMessage
		if err == nil {
			err = json.Unmarshal(data, &obj)
		}
		if err != nil {
			e := types.NewError(netconf.CodeBadConfig, "network configuration on stdin is not a JSON object: "+err.Error(), "")
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
		Static: a.IPs, StrictAffinity: c.IPAM.StrictAffinity, GatewayFirst: c.IPAM.Result == "block",
	}
}

// Gateways of "host" results: the link-local next hop tabby's dataplane
// answers for (and ptp would put on each host veth).
var (
	gw4 = net.ParseIP("169.254.1.1")
	gw6 = net.ParseIP("fe80::ecee:eeff:feee:eeee")
)

// IPAMResult builds the CNI result of an allocation: /32 and /128 with the
// link-local gateway, or (block) the block prefix with the block's first
// address as the gateway, for ptp and bridge.
func IPAMResult(out []ipam.Assigned, block bool) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	for _, as := range out {
		bits := 32
		gw, def := gw4, "0.0.0.0/0"
		if as.IP.To4() == nil {
			bits, gw, def = 128, gw6, "::/0"
		}
		mask := net.CIDRMask(bits, bits)
		if block {
			mask = as.Block.Mask
			gw = as.Block.IP
		}
		_, d, _ := net.ParseCIDR(def)
		res.Routes = append(res.Routes, &types.Route{Dst: *d})
		res.IPs = append(res.IPs, &current.IPConfig{Address: net.IPNet{IP: as.IP, Mask: mask}, Gateway: gw})
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
