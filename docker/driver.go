package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tabby-net/tabby/pkg/dataplane"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// Driver is what both protocols share: etcd, this host's identity and the
// background name lookups of new networks.
type Driver struct {
	KV            store.KV
	Nodename      string // "" means <StateDir>/nodename, else the hostname
	StateDir      string
	MTU           int // 0: uplink MTU less the pool's encapsulation
	PolicyTimeout time.Duration
	Docker        NameResolver
	Log           *slog.Logger

	mu        sync.Mutex
	resolvers map[string]context.CancelFunc // network ID -> background name lookup
	wg        sync.WaitGroup
}

// NameResolver learns a network's name from Docker (the driver protocol
// never says it).
type NameResolver interface {
	NetworkName(ctx context.Context, id string) (string, error)
}

// callTimeout bounds one plugin call's etcd work.
const callTimeout = 30 * time.Second

func (d *Driver) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), callTimeout)
}

// host is this host's name as tabby knows it: the flag, else what tabby-node
// wrote to its state dir (it may start after tabby-docker), else the
// hostname, as the CNI plugin decides.
func (d *Driver) host() (string, error) {
	if d.Nodename != "" {
		return d.Nodename, nil
	}
	if b, err := os.ReadFile(filepath.Join(d.StateDir, "nodename")); err == nil {
		if n := strings.TrimSpace(string(b)); n != "" {
			return n, nil
		}
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "", fmt.Errorf("tabby: no --nodename, no %s/nodename and no hostname", d.StateDir)
	}
	return h, nil
}

// Close stops background work.
func (d *Driver) Close() {
	d.mu.Lock()
	for _, c := range d.resolvers {
		c()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// workloadMTU is the MTU of a workload with address ip.
func (d *Driver) workloadMTU(pools []model.Pool, ips []net.IP) int {
	if d.MTU > 0 {
		return d.MTU
	}
	uplink := 0
	if b, err := os.ReadFile(filepath.Join(d.StateDir, "mtu")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n >= 576 {
			uplink = n
		}
	}
	if uplink == 0 {
		if n, err := dataplane.UplinkMTU(); err == nil {
			uplink = n
		} else {
			uplink = 1500
		}
	}
	encap := 0
	for _, ip := range ips {
		encap = max(encap, model.EncapOverhead(pools, ip))
	}
	return uplink - encap
}
