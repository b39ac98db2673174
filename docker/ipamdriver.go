package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"github.com/docker/go-plugins-helpers/ipam"

	"github.com/tabby-net/tabby/pkg/cnierr"
	tipam "github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
)

// IPAMDriver is the libnetwork remote IPAM driver.
//
// Docker asks for a pool once per network (RequestPool) and for addresses
// by pool ID only: the IPAM protocol never names the network or the
// endpoint. So every RequestPool gets a fresh pool ID "tabby/<nonce>/<cidr>"
// (or ".../any4", ".../any6" without --subnet), and the addresses of that
// Docker network are tabby IPAM handles of network "docker-<nonce>", one
// per RequestAddress. CreateEndpoint finds the handle again by address.
type IPAMDriver struct{ *Driver }

// Address spaces: only tabby's IPAM hands them out, so CreateNetwork can
// tell a network that forgot --ipam-driver tabby.
const (
	LocalAddressSpace  = "tabby-local"
	GlobalAddressSpace = "tabby-global"
)

// gatewayData keeps libnetwork from asking for a gateway address in the
// subnet: tabby containers route via 169.254.1.1, which Join returns.
func gatewayData(v6 bool) map[string]string {
	if v6 {
		return map[string]string{"com.docker.network.gateway": "::/0"}
	}
	return map[string]string{"com.docker.network.gateway": "0.0.0.0/0"}
}

// PoolID is what RequestPool hands Docker.
type PoolID struct {
	Nonce string
	CIDR  string // "" means any enabled pool of the family
	V6    bool
}

func (p PoolID) String() string {
	c := p.CIDR
	if c == "" {
		c = "any4"
		if p.V6 {
			c = "any6"
		}
	}
	return "tabby/" + p.Nonce + "/" + c
}

// Network is the tabby IPAM network of the handles of this Docker network.
func (p PoolID) Network() string { return "docker-" + p.Nonce }

func parsePoolID(s string) (PoolID, error) {
	parts := strings.SplitN(s, "/", 3)
	if len(parts) != 3 || parts[0] != "tabby" || parts[1] == "" {
		return PoolID{}, fmt.Errorf("pool ID %q was not made by tabby-docker", s)
	}
	p := PoolID{Nonce: parts[1]}
	switch parts[2] {
	case "any4":
	case "any6":
		p.V6 = true
	default:
		n, err := model.CanonicalCIDR(parts[2])
		if err != nil {
			return PoolID{}, fmt.Errorf("pool ID %q: %w", s, err)
		}
		p.CIDR, p.V6 = n.String(), n.IP.To4() == nil
	}
	return p, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (d IPAMDriver) GetCapabilities() (*ipam.CapabilitiesResponse, error) {
	return &ipam.CapabilitiesResponse{RequiresMACAddress: false}, nil
}

func (d IPAMDriver) GetDefaultAddressSpaces() (*ipam.AddressSpacesResponse, error) {
	return &ipam.AddressSpacesResponse{LocalDefaultAddressSpace: LocalAddressSpace, GlobalDefaultAddressSpace: GlobalAddressSpace}, nil
}

// poolOptions turns --ipam-opt tabby.* into the settings of a pool that
// tabby-docker creates. They do not change an existing pool.
func poolOptions(p *model.Pool, opts map[string]string) error {
	var unknown []string
	for k, v := range opts {
		switch k {
		case "tabby.ipip":
			p.IPIPMode = encapMode(v)
		case "tabby.vxlan":
			p.VXLANMode = encapMode(v)
		case "tabby.nat-outgoing":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("--ipam-opt tabby.nat-outgoing=%q: want true or false", v)
			}
			p.NATOutgoing = b
		case "tabby.block-size":
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("--ipam-opt tabby.block-size=%q: want a prefix length", v)
			}
			p.BlockSize = n
		default:
			if strings.HasPrefix(k, "tabby.") {
				unknown = append(unknown, k)
			}
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("unknown --ipam-opt %v; tabby knows tabby.ipip, tabby.vxlan, tabby.nat-outgoing, tabby.block-size", unknown)
	}
	return nil
}

// encapMode accepts "true" for always, as `tabbyctl pool add --ipip` does.
func encapMode(v string) model.EncapMode {
	switch strings.ToLower(v) {
	case "", "true", "yes", "on":
		return model.EncapAlways
	case "false", "no", "off":
		return model.EncapNever
	}
	return model.EncapMode(strings.ToLower(v))
}

func (d IPAMDriver) RequestPool(req *ipam.RequestPoolRequest) (*ipam.RequestPoolResponse, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	if req.SubPool != "" {
		return nil, fmt.Errorf("tabby: --ip-range is not supported; tabby hands out the whole subnet's pool in host blocks (pin an address with --ip instead)")
	}
	id := PoolID{Nonce: randHex(6), V6: req.V6}
	resp := &ipam.RequestPoolResponse{Data: gatewayData(req.V6)}
	if req.Pool == "" {
		pools, err := tipam.Pools(ctx, d.KV)
		if err != nil {
			return nil, err
		}
		found := false
		for _, p := range pools {
			found = found || (p.IsV6() == req.V6 && !p.Disabled)
		}
		if !found {
			return nil, fmt.Errorf("tabby: no enabled %s pool; pass --subnet (tabby creates that pool) or create one with 'tabbyctl pool add CIDR'", family(req.V6))
		}
		resp.PoolID, resp.Pool = id.String(), "0.0.0.0/0"
		if req.V6 {
			resp.Pool = "::/0"
		}
		d.Log.Info("pool requested", "poolID", resp.PoolID)
		return resp, nil
	}
	_, n, err := net.ParseCIDR(req.Pool)
	if err != nil {
		return nil, fmt.Errorf("tabby: subnet %q is not a CIDR", req.Pool)
	}
	if (n.IP.To4() == nil) != req.V6 {
		return nil, fmt.Errorf("tabby: subnet %s is not an %s subnet", n, family(req.V6))
	}
	id.CIDR = n.String()
	p := model.Pool{CIDR: id.CIDR}
	if err := poolOptions(&p, req.Options); err != nil {
		return nil, err
	}
	host, err := d.host()
	if err != nil {
		return nil, err
	}
	owned, err := EnsurePool(ctx, d.KV, p, host+"/"+id.Nonce)
	if err != nil {
		return nil, fmt.Errorf("tabby: pool %s: %w", id.CIDR, err)
	}
	resp.PoolID, resp.Pool = id.String(), id.CIDR
	d.Log.Info("pool requested", "poolID", resp.PoolID, "createdByTabbyDocker", owned)
	return resp, nil
}

func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

func (d IPAMDriver) ReleasePool(req *ipam.ReleasePoolRequest) error {
	ctx, cancel := d.ctx()
	defer cancel()
	id, err := parsePoolID(req.PoolID)
	if err != nil {
		return err
	}
	host, err := d.host()
	if err != nil {
		return err
	}
	// Whatever the network still holds (an endpoint whose release never
	// came) goes with it.
	leaked, err := (&tipam.IPAM{KV: d.KV, Host: host, LockDir: d.StateDir}).GC(ctx, id.Network(), nil)
	if err != nil {
		return fmt.Errorf("tabby: release the addresses of %s: %w", req.PoolID, err)
	}
	if len(leaked) > 0 {
		d.Log.Warn("released leftover addresses with the pool", "poolID", req.PoolID, "handles", leaked)
	}
	if id.CIDR != "" {
		removed, err := ReleasePool(ctx, d.KV, id.CIDR, refSuffix(id.Nonce))
		if err != nil {
			return fmt.Errorf("tabby: release pool %s: %w", id.CIDR, err)
		}
		if removed {
			d.Log.Info("removed pool: no Docker network uses it any more", "pool", id.CIDR)
		}
	}
	d.Log.Info("pool released", "poolID", req.PoolID)
	return nil
}

func (d IPAMDriver) RequestAddress(req *ipam.RequestAddressRequest) (*ipam.RequestAddressResponse, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	id, err := parsePoolID(req.PoolID)
	if err != nil {
		return nil, err
	}
	if req.Options["RequestAddressType"] == "com.docker.network.gateway" {
		return nil, fmt.Errorf("tabby: networks have no gateway address in the subnet (containers route via 169.254.1.1); create the network without --gateway")
	}
	host, err := d.host()
	if err != nil {
		return nil, err
	}
	r := tipam.Request{Network: id.Network(), ContainerID: randHex(8), Plugin: "tabby-docker", IPv4: !id.V6, IPv6: id.V6}
	if id.CIDR != "" {
		if id.V6 {
			r.Pools6 = []string{id.CIDR}
		} else {
			r.Pools4 = []string{id.CIDR}
		}
	}
	if req.Address != "" {
		ip := net.ParseIP(req.Address)
		if ip == nil {
			return nil, fmt.Errorf("tabby: address %q is not an IP address", req.Address)
		}
		if id.CIDR != "" {
			if _, n, _ := net.ParseCIDR(id.CIDR); !n.Contains(ip) {
				return nil, fmt.Errorf("tabby: address %s is outside the network's subnet %s", ip, id.CIDR)
			}
		}
		r.Static = []net.IP{ip}
	}
	a := &tipam.IPAM{KV: d.KV, Host: host, LockDir: d.StateDir}
	_, out, err := a.Assign(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("tabby: %w", err)
	}
	if len(out) != 1 {
		_ = a.Release(ctx, r.Network, r.ContainerID)
		return nil, fmt.Errorf("tabby: IPAM returned %d addresses, want 1", len(out))
	}
	bits := 32
	if id.V6 {
		bits = 128
	}
	addr := (&net.IPNet{IP: out[0].IP, Mask: net.CIDRMask(bits, bits)}).String()
	d.Log.Info("address assigned", "poolID", req.PoolID, "address", addr, "handle", model.HandleID(r.Network, r.ContainerID))
	return &ipam.RequestAddressResponse{Address: addr}, nil
}

func (d IPAMDriver) ReleaseAddress(req *ipam.ReleaseAddressRequest) error {
	ctx, cancel := d.ctx()
	defer cancel()
	id, err := parsePoolID(req.PoolID)
	if err != nil {
		return err
	}
	ip := net.ParseIP(req.Address)
	if ip == nil || ip.IsUnspecified() {
		return nil // the placeholder gateway of gatewayData
	}
	if err := d.releaseAddress(ctx, id.Network(), ip); err != nil {
		return fmt.Errorf("tabby: release %s: %w", ip, err)
	}
	d.Log.Info("address released", "poolID", req.PoolID, "address", ip)
	return nil
}

// releaseAddress frees ip if a handle of network holds it; an address that
// is free or held by someone else is left alone (Docker retries releases).
func (d *Driver) releaseAddress(ctx context.Context, network string, ip net.IP) error {
	al, _, err := tipam.Lookup(ctx, d.KV, ip)
	if cnierr.CodeOf(err) == cnierr.NoPool {
		return nil
	}
	if err != nil {
		return err
	}
	if al == nil || al.Network != network {
		return nil
	}
	host, err := d.host()
	if err != nil {
		return err
	}
	cid := strings.TrimPrefix(al.Handle, al.Network+".")
	return (&tipam.IPAM{KV: d.KV, Host: host, LockDir: d.StateDir}).Release(ctx, al.Network, cid)
}
