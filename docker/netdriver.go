package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/tabby-net/tabby/pkg/dataplane"
	"github.com/tabby-net/tabby/pkg/ifaddr"
	tipam "github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/nodestatus"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/workload"
)

// NetworkDriver is the libnetwork remote network driver.
type NetworkDriver struct{ *Driver }

// endpointName is the endpoint segment of every Docker endpoint's key (the
// interface Docker names eth0, eth1... inside the container).
const endpointName = model.DefaultEndpointNm

// Driver options (docker network create -o KEY=VALUE).
const optProfile = "tabby.profile"

func (d NetworkDriver) GetCapabilities() (*network.CapabilitiesResponse, error) {
	// Local: each host has its own Docker network object (and ID); what
	// joins them across hosts is the shared pool and profile in etcd.
	return &network.CapabilitiesResponse{Scope: network.LocalScope, ConnectivityScope: network.LocalScope}, nil
}

// genericOptions returns the -o options of a network.
func genericOptions(opts map[string]interface{}) map[string]string {
	out := map[string]string{}
	g, _ := opts["com.docker.network.generic"].(map[string]interface{})
	for k, v := range g {
		out[k] = fmt.Sprint(v)
	}
	return out
}

func (d NetworkDriver) CreateNetwork(req *network.CreateNetworkRequest) error {
	ctx, cancel := d.ctx()
	defer cancel()
	rec := &Network{ID: req.NetworkID, Created: time.Now().Unix()}
	for _, data := range append(append([]*network.IPAMData{}, req.IPv4Data...), req.IPv6Data...) {
		if data == nil {
			continue
		}
		if data.AddressSpace != LocalAddressSpace && data.AddressSpace != GlobalAddressSpace {
			return fmt.Errorf("tabby: the network's addresses come from IPAM address space %q, not tabby's; create it with --ipam-driver tabby", data.AddressSpace)
		}
		if data.Pool != "0.0.0.0/0" && data.Pool != "::/0" {
			rec.Subnets = append(rec.Subnets, data.Pool)
		}
	}
	var unknown []string
	for k, v := range genericOptions(req.Options) {
		switch k {
		case optProfile:
			if err := model.ValidName(v); err != nil {
				return fmt.Errorf("tabby: -o %s=%q: %w", optProfile, v, err)
			}
			rec.Profile = v
		default:
			if strings.HasPrefix(k, "tabby.") {
				unknown = append(unknown, k)
			}
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("tabby: unknown -o %v; tabby knows %s", unknown, optProfile)
	}
	host, err := d.host()
	if err != nil {
		return err
	}
	rec.Host = host
	if rec.Profile != "" {
		if _, err := EnsureProfile(ctx, d.KV, rec.Profile, host+"/"+req.NetworkID); err != nil {
			return fmt.Errorf("tabby: profile %s: %w", rec.Profile, err)
		}
	}
	if err := store.PutJSON(ctx, d.KV, networkKey(host, req.NetworkID), rec); err != nil {
		if rec.Profile != "" {
			_, _ = ReleaseProfile(ctx, d.KV, rec.Profile, host+"/"+req.NetworkID)
		}
		return fmt.Errorf("tabby: record network: %w", err)
	}
	d.Log.Info("network created", "network", req.NetworkID, "subnets", rec.Subnets, "profile", rec.Profile)
	if rec.Profile == "" {
		// Docker stores the network (and its name) only after this call
		// returns; learn the name in the background so the profile exists
		// before the first container (CreateEndpoint also asks).
		d.resolveLater(host, req.NetworkID)
	}
	return nil
}

// resolveLater looks the network's name up until Docker knows it, then
// gives the network its profile.
func (d *Driver) resolveLater(host, id string) {
	if d.Docker == nil {
		return
	}
	d.mu.Lock()
	if _, running := d.resolvers[id]; running {
		// A repeated CreateNetwork (dockerd retrying): one lookup is
		// enough, and a second would replace the first's cancel, leaving
		// it running past Close (found by FuzzHandler: Close waited a
		// minute).
		d.mu.Unlock()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if d.resolvers == nil {
		d.resolvers = map[string]context.CancelFunc{}
	}
	d.resolvers[id] = cancel
	d.wg.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		defer func() {
			d.mu.Lock()
			delete(d.resolvers, id)
			d.mu.Unlock()
			cancel()
		}()
		for {
			name, err := d.Docker.NetworkName(ctx, id)
			if err == nil {
				if _, err := d.adoptProfile(ctx, host, id, name); err != nil && ctx.Err() == nil {
					d.Log.Warn("network profile", "network", id, "err", err)
				}
				return
			}
			select {
			case <-ctx.Done():
				d.Log.Warn("could not learn the network's name from Docker; CreateEndpoint will ask again", "network", id, "err", err)
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
}

func (d *Driver) stopResolver(id string) {
	d.mu.Lock()
	c := d.resolvers[id]
	d.mu.Unlock()
	if c != nil {
		c()
	}
}

// adoptProfile gives network id the profile named after it, once.
func (d *Driver) adoptProfile(ctx context.Context, host, id, name string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rec, err := getNetwork(ctx, d.KV, host, id)
	if err != nil {
		return "", err
	}
	if rec == nil {
		return "", fmt.Errorf("tabby: network %s is unknown on host %s", id, host)
	}
	if rec.Profile != "" {
		return rec.Profile, nil
	}
	ref := host + "/" + id
	owned, err := EnsureProfile(ctx, d.KV, name, ref)
	if err != nil {
		return "", fmt.Errorf("tabby: profile %s for network %s: %w", name, id, err)
	}
	gone := false
	err = store.Update(ctx, d.KV, networkKey(host, id), func(cur *Network, exists bool) (*Network, error) {
		gone = !exists
		if !exists {
			return nil, store.ErrAbort
		}
		cur.Name, cur.Profile = name, name
		return cur, nil
	})
	if err == nil && gone {
		err = fmt.Errorf("tabby: network %s was removed meanwhile", id)
	}
	if err != nil {
		_, _ = ReleaseProfile(ctx, d.KV, name, ref)
		return "", err
	}
	d.Log.Info("network profile", "network", id, "name", name, "profile", name, "createdByTabbyDocker", owned)
	return name, nil
}

func (d NetworkDriver) DeleteNetwork(req *network.DeleteNetworkRequest) error {
	ctx, cancel := d.ctx()
	defer cancel()
	d.stopResolver(req.NetworkID)
	host, err := d.host()
	if err != nil {
		return err
	}
	rec, err := getNetwork(ctx, d.KV, host, req.NetworkID)
	if err != nil {
		return err
	}
	// Endpoints Docker never deleted (a crash between calls) go with it.
	eps, err := store.ListJSON[model.Endpoint](ctx, d.KV, model.HostWorkloadPrefix(host)+model.OrchestratorDock+"/")
	if err != nil {
		return err
	}
	for _, ep := range eps {
		if ep.Network != req.NetworkID {
			continue
		}
		if err := dataplane.Teardown("", "", ep.HostInterface); err != nil {
			return fmt.Errorf("tabby: remove %s of leftover endpoint %s: %w", ep.HostInterface, ep.Workload, err)
		}
		if _, err := workload.Delete(ctx, d.KV, ep.Key(), ep.ContainerID); err != nil {
			return err
		}
		d.Log.Warn("removed leftover endpoint with its network", "endpoint", ep.Key())
	}
	if rec != nil && rec.Profile != "" {
		removed, err := ReleaseProfile(ctx, d.KV, rec.Profile, host+"/"+req.NetworkID)
		if err != nil {
			return fmt.Errorf("tabby: release profile %s: %w", rec.Profile, err)
		}
		if removed {
			d.Log.Info("removed profile: no Docker network uses it any more", "profile", rec.Profile)
		}
	}
	if _, err := d.KV.Txn(ctx, nil, []store.Op{store.Delete(networkKey(host, req.NetworkID))}); err != nil {
		return err
	}
	d.Log.Info("network deleted", "network", req.NetworkID)
	return nil
}

func (d NetworkDriver) AllocateNetwork(*network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	return &network.AllocateNetworkResponse{}, nil
}

func (d NetworkDriver) FreeNetwork(*network.FreeNetworkRequest) error { return nil }

// names of an endpoint's veth pair: the host end as the CNI plugin names
// it (orchestrator/workload/endpoint), and a temporary name for the
// container end, which Docker moves into the container and renames.
func vethNames(endpointID string) (hostVeth, peer string) {
	sum := sha256.Sum256([]byte("docker-peer/" + endpointID))
	return dataplane.HostVethName(model.OrchestratorDock + "/" + endpointID + "/" + endpointName), "tbc" + hex.EncodeToString(sum[:])[:11]
}

func (d NetworkDriver) CreateEndpoint(req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	host, err := d.host()
	if err != nil {
		return nil, err
	}
	rec, err := getNetwork(ctx, d.KV, host, req.NetworkID)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, fmt.Errorf("tabby: network %s is unknown on host %s (was it created with another etcd or node name?); recreate it", req.NetworkID, host)
	}
	profile := rec.Profile
	if profile == "" {
		if d.Docker == nil {
			return nil, fmt.Errorf("tabby: network %s has no profile; create it with -o %s=NAME", req.NetworkID, optProfile)
		}
		name, err := d.Docker.NetworkName(ctx, req.NetworkID)
		if err != nil {
			return nil, fmt.Errorf("tabby: learn the network's name for its profile: %w (or create the network with -o %s=NAME)", err, optProfile)
		}
		if profile, err = d.adoptProfile(ctx, host, req.NetworkID, name); err != nil {
			return nil, err
		}
	}
	if req.Interface == nil || (req.Interface.Address == "" && req.Interface.AddressIPv6 == "") {
		return nil, errors.New("tabby: the endpoint has no address; tabby networks need --ipam-driver tabby")
	}
	hostVeth, _ := vethNames(req.EndpointID)
	ep := &model.Endpoint{Host: host, Orchestrator: model.OrchestratorDock, Workload: req.EndpointID, Name: endpointName,
		ContainerID: req.EndpointID, Network: req.NetworkID, IfName: endpointName, HostInterface: hostVeth,
		Profiles: []string{profile}, Labels: map[string]string{"docker.network": req.NetworkID}}
	if rec.Name != "" {
		ep.Labels["docker.network.name"] = rec.Name
	}
	var nets []net.IPNet
	for _, a := range []string{req.Interface.Address, req.Interface.AddressIPv6} {
		if a == "" {
			continue
		}
		ip, _, err := net.ParseCIDR(a)
		if err != nil {
			if ip = net.ParseIP(a); ip == nil {
				return nil, fmt.Errorf("tabby: endpoint address %q", a)
			}
		}
		nets = append(nets, ifaddr.Host(ip))
	}
	ep.IPv4Nets, ep.IPv6Nets = ifaddr.Split(nets)
	first := nets[0].IP
	if al, _, err := tipam.Lookup(ctx, d.KV, first); err == nil && al != nil {
		ep.Handle = al.Handle
	}
	resp := &network.CreateEndpointResponse{}
	if req.Interface.MacAddress != "" {
		mac, err := net.ParseMAC(req.Interface.MacAddress)
		if err != nil {
			return nil, fmt.Errorf("tabby: MAC address %q: %w", req.Interface.MacAddress, err)
		}
		ep.MAC = mac.String()
	} else {
		// Docker takes a MAC from the driver only when it has none.
		ep.MAC = ifaddr.DeriveMAC("docker-mac/" + req.EndpointID).String()
		resp.Interface = &network.EndpointInterface{MacAddress: ep.MAC}
	}
	if err := workload.Put(ctx, d.KV, ep); err != nil {
		return nil, fmt.Errorf("tabby: record endpoint: %w", err)
	}
	d.Log.Info("endpoint created", "endpoint", ep.Key(), "nets", ep.Nets(), "profile", profile, "veth", hostVeth)
	return resp, nil
}

func endpointKey(host, id string) string {
	return model.EndpointKey(host, model.OrchestratorDock, id, endpointName)
}

func (d NetworkDriver) DeleteEndpoint(req *network.DeleteEndpointRequest) error {
	ctx, cancel := d.ctx()
	defer cancel()
	host, err := d.host()
	if err != nil {
		return err
	}
	hostVeth, _ := vethNames(req.EndpointID)
	if err := dataplane.Teardown("", "", hostVeth); err != nil {
		return fmt.Errorf("tabby: remove veth %s: %w", hostVeth, err)
	}
	if _, err := workload.Delete(ctx, d.KV, endpointKey(host, req.EndpointID), req.EndpointID); err != nil {
		return fmt.Errorf("tabby: delete endpoint record: %w", err)
	}
	d.Log.Info("endpoint deleted", "endpoint", endpointKey(host, req.EndpointID))
	return nil
}

func (d NetworkDriver) EndpointInfo(req *network.InfoRequest) (*network.InfoResponse, error) {
	host, err := d.host()
	if err != nil {
		return nil, err
	}
	hostVeth, _ := vethNames(req.EndpointID)
	return &network.InfoResponse{Value: map[string]string{"hostInterface": hostVeth, "endpoint": endpointKey(host, req.EndpointID)}}, nil
}

func (d NetworkDriver) Join(req *network.JoinRequest) (resp *network.JoinResponse, err error) {
	ctx, cancel := d.ctx()
	defer cancel()
	host, err := d.host()
	if err != nil {
		return nil, err
	}
	ep, err := workload.Get(ctx, d.KV, endpointKey(host, req.EndpointID))
	if err != nil {
		return nil, fmt.Errorf("tabby: endpoint %s: %w", req.EndpointID, err)
	}
	var addrs []net.IPNet
	var ips []net.IP
	for _, s := range ep.Nets() {
		ip, n, err := net.ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("tabby: endpoint record address %q: %w", s, err)
		}
		addrs, ips = append(addrs, *n), append(ips, ip)
	}
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return nil, fmt.Errorf("tabby: endpoint record MAC %q: %w", ep.MAC, err)
	}
	var pools []model.Pool
	if d.MTU == 0 {
		if pools, err = tipam.Pools(ctx, d.KV); err != nil {
			return nil, err
		}
	}
	mtu := d.workloadMTU(pools, ips)
	hostVeth, peer := vethNames(req.EndpointID)
	if err := dataplane.SetupHostSide(dataplane.Veth{Name: hostVeth, PeerName: peer, PeerMAC: mac, MTU: mtu}, addrs); err != nil {
		return nil, fmt.Errorf("tabby: %w", err)
	}
	defer func() {
		if err != nil {
			if derr := dataplane.Teardown("", "", hostVeth); derr != nil {
				d.Log.Error("rollback: remove veth", "veth", hostVeth, "err", derr)
			}
		}
	}()
	if err := d.waitPolicy(ep); err != nil {
		return nil, err
	}
	resp = &network.JoinResponse{
		InterfaceName:         network.InterfaceName{SrcName: peer, DstPrefix: "eth"},
		DisableGatewayService: true,
	}
	for _, a := range addrs {
		// A connected route to the gateway, then Docker's default route
		// via it; the host veth answers ARP for it (proxy ARP).
		if a.IP.To4() != nil {
			resp.Gateway = ifaddr.GatewayIPv4.String()
			resp.StaticRoutes = append(resp.StaticRoutes, &network.StaticRoute{Destination: ifaddr.GatewayIPv4.String() + "/32", RouteType: routeConnected})
		} else {
			resp.GatewayIPv6 = ifaddr.GatewayIPv6.String()
			resp.StaticRoutes = append(resp.StaticRoutes, &network.StaticRoute{Destination: ifaddr.GatewayIPv6.String() + "/128", RouteType: routeConnected})
		}
	}
	d.Log.Info("endpoint joined", "endpoint", ep.Key(), "veth", hostVeth, "sandbox", req.SandboxKey, "mtu", mtu)
	return resp, nil
}

// routeConnected is libnetwork's types.CONNECTED: a route on the interface
// itself, no next hop.
const routeConnected = 1

// waitPolicy returns once this host's tabby-node has the endpoint's rules
// in force, as the CNI plugin's ADD does; a host without tabby-node has no
// packet filter to wait for.
func (d *Driver) waitPolicy(ep *model.Endpoint) error {
	if !nodestatus.Installed(d.StateDir) {
		d.Log.Debug("no tabby-node on this host: no policy to wait for", "stateDir", d.StateDir)
		return nil
	}
	start := time.Now()
	if err := nodestatus.WaitEndpoint(context.Background(), d.StateDir, nodestatus.Endpoint{Key: ep.Key(), Iface: ep.HostInterface, Container: ep.ContainerID, Profiles: ep.Profiles}, d.PolicyTimeout); err != nil {
		return fmt.Errorf("tabby: policy for endpoint %s is not in force: %w", ep.Workload, err)
	}
	d.Log.Debug("policy in force", "endpoint", ep.Key(), "after", time.Since(start))
	return nil
}

func (d NetworkDriver) Leave(req *network.LeaveRequest) error {
	hostVeth, _ := vethNames(req.EndpointID)
	if err := dataplane.Teardown("", "", hostVeth); err != nil {
		return fmt.Errorf("tabby: remove veth %s: %w", hostVeth, err)
	}
	d.Log.Info("endpoint left", "endpoint", req.EndpointID, "veth", hostVeth)
	return nil
}

func (d NetworkDriver) DiscoverNew(*network.DiscoveryNotification) error    { return nil }
func (d NetworkDriver) DiscoverDelete(*network.DiscoveryNotification) error { return nil }
func (d NetworkDriver) ProgramExternalConnectivity(*network.ProgramExternalConnectivityRequest) error {
	return nil
}
func (d NetworkDriver) RevokeExternalConnectivity(*network.RevokeExternalConnectivityRequest) error {
	return nil
}
