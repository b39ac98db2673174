package lab

import (
	"fmt"
	"time"
)

// RebootHost emulates host h's reboot as its network sees it: every
// process in its namespace is killed and the namespace is deleted and made
// afresh with the same uplink and addresses, so every interface, route,
// iptables rule and ipset that was in it is gone, as after a real reboot.
// Files (a state dir) are kept, and so are container namespaces: the caller
// removes those (RemoveContainer), as a reboot takes every container down.
func (l *Lab) RebootHost(h *Host) error {
	if !l.isHostNS(h.NS) {
		return fmt.Errorf("reboot %s: not a host of lab %s", h.NS, l.ID)
	}
	killNSProcs(h.NS)
	if err := delNS(h.NS); err != nil {
		return fmt.Errorf("reboot %s: %w", h.Name, err)
	}
	// The kernel destroys a namespace, and with it the underlay end of
	// its uplink, asynchronously.
	err := Eventually(10*time.Second, func() error {
		if _, err := runCmd("ip", "-n", l.Underlay, "link", "show", "v-"+h.Name); err == nil {
			return fmt.Errorf("reboot %s: the old uplink v-%s is still there", h.Name, h.Name)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The namespace keeps its place in l.namespaces: Close deletes it again.
	if out, err := runCmd("ip", "netns", "add", h.NS); err != nil {
		return fmt.Errorf("reboot %s: ip netns add: %w: %s", h.Name, err, out)
	}
	err = l.link(h.NS, "v-"+h.Name, fmt.Sprintf("br%d", h.Subnet),
		[]string{h.CIDR}, []string{h.IP6 + "/64"}, h.Gateway, h.Gateway6, forwarding)
	if err != nil {
		return fmt.Errorf("reboot %s: %w", h.Name, err)
	}
	return nil
}
