package dataplane

import (
	"bytes"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/pkg/ifaddr"
)

// CheckError lists everything Check found wrong, one problem per entry.
type CheckError struct {
	Problems []string
}

func (e *CheckError) Error() string {
	return "dataplane check failed: " + strings.Join(e.Problems, "; ")
}

type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

// Inspect reads the state a Setup left, so that a repeated ADD can be
// answered from it. It returns the container's global addresses on ifName and
// fails unless hostVeth and ifName exist and are the two ends of one veth.
func Inspect(netnsPath, ifName, hostVeth string) (*Result, []net.IPNet, error) {
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, fmt.Errorf("open netlink socket: %w", err)
	}
	defer host.Close()
	hl, err := host.LinkByName(hostVeth)
	if err != nil {
		return nil, nil, fmt.Errorf("find host veth %s: %w", hostVeth, err)
	}

	contNS, err := ns.GetNS(netnsPath)
	if err != nil {
		return nil, nil, fmt.Errorf("open container netns %s: %w", netnsPath, err)
	}
	defer contNS.Close()
	cont, err := containerHandle(contNS)
	if err != nil {
		return nil, nil, err
	}
	defer cont.Close()
	cl, err := cont.LinkByName(ifName)
	if err != nil {
		return nil, nil, fmt.Errorf("find %s in netns %s: %w", ifName, netnsPath, err)
	}
	if !paired(host, hl, contNS, cl) {
		return nil, nil, fmt.Errorf("host veth %s and %s in netns %s are not the two ends of one veth", hostVeth, ifName, netnsPath)
	}

	addrs, err := cont.AddrList(cl, netlink.FAMILY_ALL)
	if err != nil {
		return nil, nil, fmt.Errorf("list addresses of %s in netns %s: %w", ifName, netnsPath, err)
	}
	var nets []net.IPNet
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE && !a.IP.IsLinkLocalUnicast() {
			nets = append(nets, *a.IPNet)
		}
	}
	res := &Result{
		HostVeth:         hostVeth,
		HostMAC:          hl.Attrs().HardwareAddr,
		ContainerMAC:     cl.Attrs().HardwareAddr,
		ContainerIfIndex: cl.Attrs().Index,
		Sandbox:          netnsPath,
	}
	return res, nets, nil
}

// paired reports whether hl (host namespace) and cl (in contNS) are the two
// ends of one veth: hl's peer lives in contNS under cl's ifindex.
func paired(host *netlink.Handle, hl netlink.Link, contNS ns.NetNS, cl netlink.Link) bool {
	if hl.Type() != "veth" || cl.Type() != "veth" {
		return false
	}
	id, err := host.GetNetNsIdByFd(int(contNS.Fd()))
	if err != nil || id < 0 {
		return false
	}
	return hl.Attrs().NetNsID == id && hl.Attrs().ParentIndex == cl.Attrs().Index
}

// Check verifies everything Setup makes for cfg and returns a *CheckError
// naming each thing that is missing or wrong, or nil.
func Check(cfg Config) error {
	p, err := newPlan(cfg)
	if err != nil {
		return err
	}
	var probs problems

	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer host.Close()

	hl := checkHost(host, p, &probs)

	contNS, err := ns.GetNS(p.NetnsPath)
	if err != nil {
		probs.add("container netns %s cannot be opened: %v", p.NetnsPath, err)
		return &CheckError{Problems: probs}
	}
	defer contNS.Close()
	cont, err := containerHandle(contNS)
	if err != nil {
		return err
	}
	defer cont.Close()

	cl := checkContainer(cont, p, &probs)
	if hl != nil && cl != nil && !paired(host, hl, contNS, cl) {
		probs.add("host veth %s is not the peer of %s in netns %s", p.HostVeth, p.IfName, p.NetnsPath)
	}
	if len(probs) > 0 {
		return &CheckError{Problems: probs}
	}
	return nil
}

// checkHost returns the host veth when it exists, for the pairing check.
func checkHost(host *netlink.Handle, p *plan, probs *problems) netlink.Link {
	name := p.HostVeth
	hl, err := host.LinkByName(name)
	if isLinkNotFound(err) {
		probs.add("host veth %s is missing", name)
		return nil
	}
	if err != nil {
		probs.add("host veth %s cannot be read: %v", name, err)
		return nil
	}
	a := hl.Attrs()
	if hl.Type() != "veth" {
		probs.add("host interface %s is a %s, not a veth", name, hl.Type())
	}
	if a.Flags&net.FlagUp == 0 {
		probs.add("host veth %s is down", name)
	}
	if !bytes.Equal(a.HardwareAddr, ifaddr.HostVethMAC) {
		probs.add("host veth %s has MAC %s, want %s", name, a.HardwareAddr, ifaddr.HostVethMAC)
	}
	if p.MTU > 0 && a.MTU != p.MTU {
		probs.add("host veth %s has MTU %d, want %d", name, a.MTU, p.MTU)
	}

	var want []struct{ path, val string }
	if p.hasV4 {
		want = append(want, []struct{ path, val string }{
			{"/proc/sys/net/ipv4/ip_forward", "1"},
			{"/proc/sys/net/ipv4/conf/" + name + "/proxy_arp", "1"},
			{"/proc/sys/net/ipv4/neigh/" + name + "/proxy_delay", "0"},
			{"/proc/sys/net/ipv4/conf/" + name + "/forwarding", "1"},
		}...)
	}
	if p.hasV6 {
		want = append(want, []struct{ path, val string }{
			{"/proc/sys/net/ipv6/conf/all/forwarding", "1"},
			{"/proc/sys/net/ipv6/conf/" + name + "/accept_ra", "0"},
			{"/proc/sys/net/ipv6/conf/" + name + "/forwarding", "1"},
		}...)
	}
	for _, s := range want {
		got, err := readSysctl(s.path)
		if err != nil {
			probs.add("%v", err)
		} else if got != s.val {
			probs.add("sysctl %s is %s, want %s", sysctlName(s.path), got, s.val)
		}
	}

	if p.hasV6 {
		addrs, err := host.AddrList(hl, netlink.FAMILY_V6)
		if err != nil {
			probs.add("host veth %s addresses cannot be read: %v", name, err)
		} else if a := findAddr(addrs, ifaddr.GatewayIPv6); a == nil {
			probs.add("host veth %s lacks link-local %s", name, ifaddr.GatewayIPv6)
		} else if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			probs.add("host veth %s link-local %s is tentative or failed DAD", name, ifaddr.GatewayIPv6)
		}
	}

	for i := range p.addrs {
		checkHostRoute(host, hl, &p.addrs[i], p.routeProto, probs)
	}
	return hl
}

func checkHostRoute(host *netlink.Handle, hl netlink.Link, dst *net.IPNet, proto netlink.RouteProtocol, probs *problems) {
	family := netlink.FAMILY_V4
	if dst.IP.To4() == nil {
		family = netlink.FAMILY_V6
	}
	routes, err := host.RouteListFiltered(family, &netlink.Route{Dst: dst}, netlink.RT_FILTER_DST)
	if err != nil {
		probs.add("host routes to %s cannot be read: %v", dst, err)
		return
	}
	name, idx := hl.Attrs().Name, hl.Attrs().Index
	for _, r := range routes {
		if r.LinkIndex == idx && r.Gw == nil {
			if r.Protocol != proto {
				probs.add("host route to %s dev %s has protocol %s, want %s", dst, name, r.Protocol, proto)
			}
			return
		}
	}
	if len(routes) > 0 {
		probs.add("host route to %s points elsewhere (ifindex %d), want dev %s", dst, routes[0].LinkIndex, name)
		return
	}
	probs.add("host route to %s dev %s is missing", dst, name)
}

// checkContainer returns the container interface when it exists.
func checkContainer(cont *netlink.Handle, p *plan, probs *problems) netlink.Link {
	cl, err := cont.LinkByName(p.IfName)
	if isLinkNotFound(err) {
		probs.add("container interface %s is missing in netns %s", p.IfName, p.NetnsPath)
		return nil
	}
	if err != nil {
		probs.add("container interface %s cannot be read: %v", p.IfName, err)
		return nil
	}
	a := cl.Attrs()
	if cl.Type() != "veth" {
		probs.add("container interface %s is a %s, not a veth", p.IfName, cl.Type())
	}
	if a.Flags&net.FlagUp == 0 {
		probs.add("container interface %s is down", p.IfName)
	}
	if p.MTU > 0 && a.MTU != p.MTU {
		probs.add("container interface %s has MTU %d, want %d", p.IfName, a.MTU, p.MTU)
	}

	addrs, err := cont.AddrList(cl, netlink.FAMILY_ALL)
	if err != nil {
		probs.add("container addresses cannot be read: %v", err)
	} else {
		for _, want := range p.addrs {
			got := findAddr(addrs, want.IP)
			switch {
			case got == nil:
				probs.add("container address %s is missing on %s", want.String(), p.IfName)
			case got.IPNet.String() != want.String():
				probs.add("container address %s on %s has prefix %s, want %s", want.IP, p.IfName, got.IPNet, want.String())
			case got.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0:
				probs.add("container address %s on %s is tentative or failed DAD", want.IP, p.IfName)
			}
		}
	}

	routes, err := cont.RouteList(cl, netlink.FAMILY_ALL)
	if err != nil {
		probs.add("container routes cannot be read: %v", err)
		routes = nil
	}
	hasRoute := func(match func(r netlink.Route) bool) bool {
		for _, r := range routes {
			if match(r) {
				return true
			}
		}
		return false
	}
	isDefault := func(r netlink.Route) bool {
		return r.Dst == nil || (r.Dst.IP.IsUnspecified() && prefixLen(r.Dst) == 0)
	}
	neighs, nerr := cont.NeighList(a.Index, netlink.FAMILY_ALL)
	if nerr != nil {
		probs.add("container neighbours cannot be read: %v", nerr)
	}
	checkNeigh := func(ip net.IP) {
		if nerr != nil {
			return
		}
		for _, n := range neighs {
			if n.IP.Equal(ip) {
				if n.State&netlink.NUD_PERMANENT == 0 || !bytes.Equal(n.HardwareAddr, ifaddr.HostVethMAC) {
					probs.add("container neighbour %s is %s state %s, want %s permanent", ip, n.HardwareAddr, neighState(n.State), ifaddr.HostVethMAC)
				}
				return
			}
		}
		probs.add("container permanent neighbour %s -> %s is missing", ip, ifaddr.HostVethMAC)
	}

	if p.hasV4 && err == nil {
		if !hasRoute(func(r netlink.Route) bool {
			return r.Dst != nil && r.Dst.IP.Equal(ifaddr.GatewayIPv4) && prefixLen(r.Dst) == 32 && r.Scope == netlink.SCOPE_LINK
		}) {
			probs.add("container route %s dev %s scope link is missing", ifaddr.GatewayIPv4, p.IfName)
		}
		if !hasRoute(func(r netlink.Route) bool { return isDefault(r) && r.Gw.Equal(ifaddr.GatewayIPv4) }) {
			probs.add("container default route via %s dev %s is missing", ifaddr.GatewayIPv4, p.IfName)
		}
	}
	if p.hasV4 {
		checkNeigh(ifaddr.GatewayIPv4)
	}
	if p.hasV6 && err == nil {
		if !hasRoute(func(r netlink.Route) bool { return isDefault(r) && r.Gw.Equal(ifaddr.GatewayIPv6) }) {
			probs.add("container IPv6 default route via %s dev %s is missing", ifaddr.GatewayIPv6, p.IfName)
		}
	}
	if p.hasV6 {
		checkNeigh(ifaddr.GatewayIPv6)
	}
	return cl
}

func findAddr(addrs []netlink.Addr, ip net.IP) *netlink.Addr {
	for i := range addrs {
		if addrs[i].IP.Equal(ip) {
			return &addrs[i]
		}
	}
	return nil
}

func prefixLen(n *net.IPNet) int {
	ones, _ := n.Mask.Size()
	return ones
}

func neighState(s int) string {
	switch {
	case s&netlink.NUD_PERMANENT != 0:
		return "permanent"
	case s&netlink.NUD_REACHABLE != 0:
		return "reachable"
	case s&netlink.NUD_STALE != 0:
		return "stale"
	case s&netlink.NUD_FAILED != 0:
		return "failed"
	case s&netlink.NUD_INCOMPLETE != 0:
		return "incomplete"
	}
	return fmt.Sprintf("%#x", s)
}

// sysctlName turns /proc/sys/net/ipv4/conf/x/proxy_arp into
// net.ipv4.conf.x.proxy_arp, the form people type.
func sysctlName(path string) string {
	return strings.ReplaceAll(strings.TrimPrefix(path, "/proc/sys/"), "/", ".")
}
