package dataplane

import (
	"fmt"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Teardown removes what Setup made. It is idempotent: a missing netns, a
// missing veth and missing routes are all fine. Either argument may be empty.
//
// The host routes and both veth ends go away with either end, so Teardown
// deletes HostVeth when its peer is in this container's namespace (or the
// namespace is gone), and otherwise deletes ifName inside the container if it
// is a veth.
func Teardown(netnsPath, ifName, hostVeth string) error {
	var contNS ns.NetNS
	if netnsPath != "" {
		n, err := ns.GetNS(netnsPath)
		switch {
		case err == nil:
			contNS = n
			defer n.Close()
		case isNetnsGone(err):
			// The namespace took its end of the veth with it; the host end
			// may linger while the kernel cleans up, so still delete it.
		default:
			return fmt.Errorf("open container netns %s: %w", netnsPath, err)
		}
	}

	if hostVeth != "" {
		deleted, err := deleteHostVeth(hostVeth, contNS)
		if err != nil || deleted {
			return err
		}
	}
	if contNS == nil || ifName == "" {
		return nil
	}

	cont, err := containerHandle(contNS)
	if err != nil {
		return err
	}
	defer cont.Close()
	link, err := cont.LinkByName(ifName)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s in netns %s: %w", ifName, netnsPath, err)
	}
	if link.Type() != "veth" {
		// Not something tabby makes; leave it to whoever did.
		return nil
	}
	if err := cont.LinkDel(link); err != nil && !isLinkNotFound(err) {
		return fmt.Errorf("delete %s in netns %s: %w", ifName, netnsPath, err)
	}
	return nil
}

// deleteHostVeth deletes the host veth if it belongs to contNS (nil: the
// container namespace is gone, so it belongs to nothing). It reports whether
// the pair is now gone.
func deleteHostVeth(name string, contNS ns.NetNS) (bool, error) {
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return false, fmt.Errorf("open netlink socket: %w", err)
	}
	defer host.Close()

	link, err := host.LinkByName(name)
	if isLinkNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("find host veth %s: %w", name, err)
	}
	if link.Type() != "veth" {
		return false, nil
	}
	if contNS != nil {
		// A host veth of this name whose peer is in another namespace belongs
		// to a newer sandbox of the same workload: a late DEL must not break it.
		// The link lookup above made the kernel assign the peer namespace an id.
		id, err := host.GetNetNsIdByFd(int(contNS.Fd()))
		if err != nil || id < 0 || link.Attrs().NetNsID != id {
			return false, nil
		}
	}
	if err := host.LinkDel(link); err != nil && !isLinkNotFound(err) {
		return false, fmt.Errorf("delete host veth %s: %w", name, err)
	}
	return true, nil
}
