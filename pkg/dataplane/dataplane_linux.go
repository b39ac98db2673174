package dataplane

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/pkg/ifaddr"
)

const (
	// HostVethPrefix starts the name of every host-side veth tabby makes.
	HostVethPrefix = "tby"

	// DefaultRouteProtocol marks the host routes tabby installs toward its
	// workloads, so other components (the node daemon) can tell them apart.
	DefaultRouteProtocol netlink.RouteProtocol = 80

	// loopbackIfIndex is LOOPBACK_IFINDEX: lo is always ifindex 1 in every
	// network namespace, which saves a lookup.
	loopbackIfIndex = 1
)

var (
	// ErrContainerIfExists: the requested interface name is already taken in
	// the container namespace.
	ErrContainerIfExists = errors.New("interface already exists in container")
	// ErrAddressRouted: the host already routes one of the addresses to another
	// interface, i.e. the address is probably in use by another workload.
	ErrAddressRouted = errors.New("address already routed on host")
	// ErrContainerNetns: the container's network namespace cannot be opened
	// (a bad CNI_NETNS, or a sandbox that is gone).
	ErrContainerNetns = errors.New("container network namespace")
)

// HostVethName returns the host-side veth name for a workload identity the
// caller chooses (e.g. "<orchestrator>/<workload>/<ifname>"): "tby" and 11 hex
// characters of its SHA-256, 14 characters in all (IFNAMSIZ allows 15).
func HostVethName(identity string) string {
	sum := sha256.Sum256([]byte(identity))
	return HostVethPrefix + hex.EncodeToString(sum[:])[:11]
}

// Config describes one container interface.
type Config struct {
	NetnsPath string // container netns path
	IfName    string // CNI_IFNAME inside the container
	HostVeth  string // from HostVethName
	MTU       int    // 0 keeps the kernel default (1500 for veth)
	// Addrs are the container's addresses. Only the IP is used: they are
	// always installed as /32 (IPv4) or /128 (IPv6).
	Addrs []net.IPNet
	// RouteProtocol tags the host routes; 0 means DefaultRouteProtocol.
	RouteProtocol netlink.RouteProtocol
	// ContainerMAC, when set, is the container interface's MAC (the CNI
	// plugin derives it from the container ID so that it can record the
	// endpoint before the interface exists); nil lets the kernel pick.
	ContainerMAC net.HardwareAddr
}

// Result is what a CNI result needs to know about the created interfaces.
type Result struct {
	HostVeth         string
	HostMAC          net.HardwareAddr
	ContainerMAC     net.HardwareAddr
	ContainerIfIndex int
	Sandbox          string // the container netns path
}

// plan is a validated Config with host-length addresses.
type plan struct {
	Config
	addrs      []net.IPNet
	hasV4      bool
	hasV6      bool
	routeProto netlink.RouteProtocol
}

func newPlan(cfg Config) (*plan, error) {
	if cfg.NetnsPath == "" {
		return nil, errors.New("container netns path is empty")
	}
	if err := validIfName(cfg.IfName); err != nil {
		return nil, fmt.Errorf("container interface name: %w", err)
	}
	if err := validIfName(cfg.HostVeth); err != nil {
		return nil, fmt.Errorf("host veth name: %w", err)
	}
	if cfg.MTU < 0 {
		return nil, fmt.Errorf("MTU %d is negative", cfg.MTU)
	}
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("no addresses for the container")
	}
	return hostPlan(cfg)
}

// hostPlan makes the addresses host-length and notes their families.
func hostPlan(cfg Config) (*plan, error) {
	p := &plan{Config: cfg, routeProto: cfg.RouteProtocol}
	if p.routeProto == 0 {
		p.routeProto = DefaultRouteProtocol
	}
	for _, a := range cfg.Addrs {
		if a.IP.To4() == nil && len(a.IP) != net.IPv6len {
			return nil, fmt.Errorf("invalid container address %q", a.String())
		}
		h := ifaddr.Host(a.IP)
		p.addrs = append(p.addrs, h)
		p.hasV4 = p.hasV4 || len(h.IP) == net.IPv4len
		p.hasV6 = p.hasV6 || len(h.IP) == net.IPv6len
	}
	return p, nil
}

// validIfName mirrors the kernel's dev_valid_name so a bad name fails with a
// readable message instead of EINVAL.
func validIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) >= unix.IFNAMSIZ:
		return fmt.Errorf("%q is longer than %d characters", name, unix.IFNAMSIZ-1)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a valid interface name", name)
	case strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("%q contains '/', ':' or whitespace", name)
	}
	return nil
}

// Setup creates the veth pair and everything described in the package
// documentation. On any error it removes what it created.
func Setup(cfg Config) (res *Result, err error) {
	p, err := newPlan(cfg)
	if err != nil {
		return nil, err
	}

	contNS, err := ns.GetNS(p.NetnsPath)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrContainerNetns, p.NetnsPath, err)
	}
	defer contNS.Close()

	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	defer host.Close()

	cont, err := containerHandle(contNS)
	if err != nil {
		return nil, err
	}
	defer cont.Close()

	hostVeth, err := CreateVeth(host, Veth{Name: p.HostVeth, PeerName: p.IfName, PeerNS: contNS, PeerMAC: p.ContainerMAC, MTU: p.MTU})
	if err != nil {
		return nil, err
	}
	// Deleting the host end takes the container end, its addresses and routes,
	// and the host routes with it: one call undoes everything below.
	defer func() {
		if err == nil {
			return
		}
		if delErr := host.LinkDel(hostVeth); delErr != nil && !isLinkNotFound(delErr) {
			err = errors.Join(err, fmt.Errorf("roll back: delete veth %s: %w", p.HostVeth, delErr))
		}
	}()

	// Sysctls and the host's link-local go in before the container end comes
	// up: until then the host end has no carrier, so IPv6 has not yet
	// generated addresses, sent router solicitations or started DAD.
	if err = configureHostVeth(host, hostVeth, p); err != nil {
		return nil, err
	}

	res = &Result{HostVeth: p.HostVeth, HostMAC: ifaddr.HostVethMAC, Sandbox: p.NetnsPath}
	if err = configureContainer(cont, contNS, p, res); err != nil {
		return nil, err
	}

	if err = addHostRoutes(host, hostVeth.Attrs().Index, p); err != nil {
		return nil, err
	}
	if err = waitOperUp(host, hostVeth.Attrs().Index, p.HostVeth); err != nil {
		return nil, err
	}
	if err = waitOperUp(cont, res.ContainerIfIndex, p.IfName); err != nil {
		return nil, err
	}
	return res, nil
}

// operUpTimeout bounds the wait for the kernel to activate a new link.
const operUpTimeout = 2 * time.Second

// waitOperUp returns once the kernel reports the link operationally up.
// A veth that is up with its carrier on still drops what it is given until
// the kernel's link-watch work has attached its queueing discipline, which
// is the moment it sets the operational state; on a loaded host that work
// can lag by milliseconds, and an ARP request lost then costs the first
// connection a second. The ADD promises a working interface, so it waits.
func waitOperUp(h *netlink.Handle, index int, name string) error {
	deadline := time.Now().Add(operUpTimeout)
	for {
		l, err := h.LinkByIndex(index)
		if err != nil {
			return fmt.Errorf("read state of %s: %w", name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is not operationally up after %v (state %s)", name, operUpTimeout, l.Attrs().OperState)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// containerHandle opens a netlink socket inside the container namespace. The
// socket stays bound to that namespace, so the caller's goroutine can use it
// without ns.Do.
func containerHandle(contNS ns.NetNS) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(netns.NsHandle(contNS.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket in netns %s: %w", contNS.Path(), err)
	}
	return h, nil
}

// Veth is a pair made from the host namespace: the host end Name with
// ifaddr.HostVethMAC, and its peer either created directly inside PeerNS (the CNI
// plugin: one RTM_NEWLINK, no move) or, with PeerNS nil, left in the host
// namespace for the runtime to move (libnetwork does that for Docker).
type Veth struct {
	Name     string
	PeerName string
	PeerNS   ns.NetNS
	PeerMAC  net.HardwareAddr // nil lets the kernel pick
	MTU      int              // both ends; 0 is the kernel default
}

func (v Veth) link() *netlink.Veth {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = v.Name
	attrs.HardwareAddr = ifaddr.HostVethMAC
	attrs.MTU = v.MTU
	attrs.Flags = net.FlagUp
	l := &netlink.Veth{LinkAttrs: attrs, PeerName: v.PeerName, PeerHardwareAddr: v.PeerMAC}
	if v.PeerNS != nil {
		l.PeerNamespace = netlink.NsFd(v.PeerNS.Fd())
	}
	return l
}

func (v Veth) where() string {
	if v.PeerNS != nil {
		return " in " + v.PeerNS.Path()
	}
	return ""
}

// CreateVeth makes the pair. A veth already holding either name is the
// leftover of an earlier attempt for the same identity (an ADD whose DEL
// never came, a retried Join): it is replaced, as Calico does. EEXIST can
// mean either name, so the names are looked up to tell which; a peer name
// taken inside a container namespace is ErrContainerIfExists.
func CreateVeth(host *netlink.Handle, v Veth) (*netlink.Veth, error) {
	for attempt := 0; ; attempt++ {
		l := v.link()
		err := host.LinkAdd(l)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create veth %s (peer %s%s): %w", v.Name, v.PeerName, v.where(), err)
		}
		if attempt > 0 {
			return nil, fmt.Errorf("create veth %s: still exists after deleting the old one: %w", v.Name, err)
		}
		stale := []string{v.Name}
		if v.PeerNS == nil {
			stale = append(stale, v.PeerName)
		}
		found := false
		for _, name := range stale {
			old, lerr := host.LinkByName(name)
			if isLinkNotFound(lerr) {
				continue
			}
			if lerr != nil {
				return nil, fmt.Errorf("create veth %s: %w (and looking up %s: %v)", v.Name, err, name, lerr)
			}
			if old.Type() != "veth" {
				return nil, fmt.Errorf("create veth: interface %s exists and is a %s, not a veth", name, old.Type())
			}
			if derr := host.LinkDel(old); derr != nil && !isLinkNotFound(derr) {
				return nil, fmt.Errorf("delete stale veth %s: %w", name, derr)
			}
			found = true
		}
		if !found {
			if v.PeerNS != nil {
				return nil, fmt.Errorf("%w: %s%s", ErrContainerIfExists, v.PeerName, v.where())
			}
			return nil, fmt.Errorf("create veth %s (peer %s): %w", v.Name, v.PeerName, err)
		}
	}
}

func configureHostVeth(host *netlink.Handle, veth netlink.Link, p *plan) error {
	name := p.HostVeth
	if p.hasV4 {
		if err := ensureSysctl("/proc/sys/net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		for _, s := range []struct{ path, val string }{
			{"/proc/sys/net/ipv4/conf/" + name + "/proxy_arp", "1"},
			{"/proc/sys/net/ipv4/neigh/" + name + "/proxy_delay", "0"},
			{"/proc/sys/net/ipv4/conf/" + name + "/forwarding", "1"},
		} {
			if err := writeSysctl(s.path, s.val); err != nil {
				return err
			}
		}
	}
	if !p.hasV6 {
		return nil
	}
	if err := ensureSysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1"); err != nil {
		return err
	}
	for _, s := range []struct{ path, val string }{
		{"/proc/sys/net/ipv6/conf/" + name + "/accept_ra", "0"},
		{"/proc/sys/net/ipv6/conf/" + name + "/forwarding", "1"},
		// No kernel-generated addresses: with stable_privacy the link-local
		// would not be ifaddr.GatewayIPv6, and an EUI-64 one would sit in DAD.
		{"/proc/sys/net/ipv6/conf/" + name + "/addr_gen_mode", "1"},
	} {
		if err := writeSysctl(s.path, s.val); err != nil {
			return err
		}
	}
	ll := &netlink.Addr{
		IPNet: &net.IPNet{IP: ifaddr.GatewayIPv6, Mask: net.CIDRMask(64, 128)},
		Flags: unix.IFA_F_NODAD,
		Scope: unix.RT_SCOPE_LINK,
	}
	err := addAddrEnablingIPv6(host, veth, ll, func() error {
		return writeSysctl("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", "0")
	})
	if err != nil {
		return fmt.Errorf("add %s to host veth %s: %w", ifaddr.GatewayIPv6, name, err)
	}
	return nil
}

// addAddrEnablingIPv6 adds addr; if IPv6 is disabled on the link (EACCES) it
// enables it and retries, so the common case pays no extra sysctl read.
func addAddrEnablingIPv6(h *netlink.Handle, link netlink.Link, addr *netlink.Addr, enable func() error) error {
	err := h.AddrAdd(link, addr)
	if !errors.Is(err, unix.EACCES) || addr.IP.To4() != nil {
		return err
	}
	if eerr := enable(); eerr != nil {
		return fmt.Errorf("%w (IPv6 is disabled, enabling it failed: %v)", err, eerr)
	}
	return h.AddrAdd(link, addr)
}

func configureContainer(cont *netlink.Handle, contNS ns.NetNS, p *plan, res *Result) error {
	link, err := cont.LinkByName(p.IfName)
	if err != nil {
		return fmt.Errorf("find %s in netns %s: %w", p.IfName, p.NetnsPath, err)
	}
	res.ContainerMAC = link.Attrs().HardwareAddr
	res.ContainerIfIndex = link.Attrs().Index
	idx := link.Attrs().Index

	if err := cont.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up in container: %w", p.IfName, err)
	}
	lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: loopbackIfIndex}}
	if err := cont.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in container: %w", err)
	}

	enableV6 := func() error {
		return contNS.Do(func(ns.NetNS) error {
			return writeSysctl("/proc/sys/net/ipv6/conf/"+p.IfName+"/disable_ipv6", "0")
		})
	}
	for i := range p.addrs {
		a := &netlink.Addr{IPNet: &p.addrs[i]}
		if a.IP.To4() == nil {
			// A point-to-point link with one host-chosen address: DAD would
			// only hold the address unusable for a second or more.
			a.Flags = unix.IFA_F_NODAD
		}
		if err := addAddrEnablingIPv6(cont, link, a, enableV6); err != nil {
			return fmt.Errorf("add address %s to %s in container: %w", a.IPNet, p.IfName, err)
		}
	}

	if p.hasV4 {
		gwNet := &net.IPNet{IP: ifaddr.GatewayIPv4, Mask: net.CIDRMask(32, 32)}
		if err := cont.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: gwNet, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("add route %s dev %s scope link in container: %w", ifaddr.GatewayIPv4, p.IfName, err)
		}
		if err := cont.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: ifaddr.GatewayIPv4}); err != nil {
			return fmt.Errorf("add default route via %s in container: %w", ifaddr.GatewayIPv4, existsHint(err))
		}
		if err := setGatewayNeigh(cont, idx, netlink.FAMILY_V4, ifaddr.GatewayIPv4); err != nil {
			return err
		}
	}
	if p.hasV6 {
		if err := setGatewayNeigh(cont, idx, netlink.FAMILY_V6, ifaddr.GatewayIPv6); err != nil {
			return err
		}
		if err := cont.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: ifaddr.GatewayIPv6}); err != nil {
			return fmt.Errorf("add default route via %s in container: %w", ifaddr.GatewayIPv6, existsHint(err))
		}
	}
	return nil
}

func existsHint(err error) error {
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%w (the container already has a default route)", err)
	}
	return err
}

func setGatewayNeigh(h *netlink.Handle, idx, family int, ip net.IP) error {
	n := &netlink.Neigh{
		LinkIndex:    idx,
		Family:       family,
		State:        netlink.NUD_PERMANENT,
		IP:           ip,
		HardwareAddr: ifaddr.HostVethMAC,
	}
	if err := h.NeighSet(n); err != nil {
		return fmt.Errorf("add permanent neighbour %s -> %s in container: %w", ip, ifaddr.HostVethMAC, err)
	}
	return nil
}

// ConfigureHostSide makes an existing veth end in the caller's (host)
// namespace a workload's host side, as Setup does for the CNI plugin:
// proxy ARP and forwarding sysctls, the IPv6 gateway link-local, and a /32
// (/128) route per address. tabby-docker uses it; libnetwork configures the
// container end itself.
func ConfigureHostSide(host *netlink.Handle, link netlink.Link, addrs []net.IPNet) error {
	p, err := hostPlan(Config{HostVeth: link.Attrs().Name, Addrs: addrs})
	if err != nil {
		return err
	}
	if err := configureHostVeth(host, link, p); err != nil {
		return err
	}
	return addHostRoutes(host, link.Attrs().Index, p)
}

// SetupHostSide makes a veth pair whose peer stays in the host namespace for
// the runtime to move into its container (libnetwork does that for Docker),
// and configures the host end with ConfigureHostSide. On error nothing is
// left.
func SetupHostSide(v Veth, addrs []net.IPNet) (err error) {
	if v.PeerNS != nil {
		return errors.New("SetupHostSide: the peer must stay in the host namespace")
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()
	veth, err := CreateVeth(h, v)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = h.LinkDel(veth)
		}
	}()
	link, err := h.LinkByName(v.Name)
	if err != nil {
		return fmt.Errorf("find %s: %w", v.Name, err)
	}
	return ConfigureHostSide(h, link, addrs)
}

func hostRoute(idx int, dst *net.IPNet, proto netlink.RouteProtocol) *netlink.Route {
	r := &netlink.Route{LinkIndex: idx, Dst: dst, Protocol: proto}
	if dst.IP.To4() != nil {
		// IPv6 routes have no scope; the kernel reports them as universe.
		r.Scope = netlink.SCOPE_LINK
	}
	return r
}

func addHostRoutes(host *netlink.Handle, idx int, p *plan) error {
	for i := range p.addrs {
		dst := &p.addrs[i]
		err := host.RouteAdd(hostRoute(idx, dst, p.routeProto))
		if err == nil {
			continue
		}
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%w: %s (%s)", ErrAddressRouted, dst, describeRoutes(host, dst))
		}
		return fmt.Errorf("add host route %s dev %s: %w", dst, p.HostVeth, err)
	}
	return nil
}

// describeRoutes names the interfaces already routing dst, for an error
// message a person can act on.
func describeRoutes(h *netlink.Handle, dst *net.IPNet) string {
	family := netlink.FAMILY_V4
	if dst.IP.To4() == nil {
		family = netlink.FAMILY_V6
	}
	routes, err := h.RouteListFiltered(family, &netlink.Route{Dst: dst}, netlink.RT_FILTER_DST)
	if err != nil || len(routes) == 0 {
		return "existing route not found"
	}
	var parts []string
	for _, r := range routes {
		dev := fmt.Sprintf("ifindex %d", r.LinkIndex)
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		parts = append(parts, fmt.Sprintf("existing route dev %s proto %s", dev, r.Protocol))
	}
	return strings.Join(parts, ", ")
}

func isLinkNotFound(err error) bool {
	if err == nil {
		return false
	}
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// isNetnsGone: the path is missing, or is left as a plain file after the
// namespace was unmounted. Either way its interfaces are gone with it.
func isNetnsGone(err error) bool {
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	return errors.As(err, &notExist) || errors.As(err, &notNS)
}
