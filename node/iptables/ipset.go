package iptables

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
)

// Set is an ipset tabby owns (names start with "tabby-").
type Set struct {
	Name    string
	Type    string // hash:net, hash:ip
	Family  Family
	Members []string
}

// SetPrefix starts every ipset tabby owns.
const SetPrefix = "tabby-"

// currentSets reads every tabby set and its members with one `ipset save`
// (one exec per reconcile, not one per set).
func currentSets() (map[string][]string, error) {
	out, err := exec.Command("ipset", "save").Output()
	if err != nil {
		return nil, fmt.Errorf("ipset save: %w", err)
	}
	sets := map[string][]string{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || !strings.HasPrefix(f[1], SetPrefix) {
			continue
		}
		switch f[0] {
		case "create":
			if _, ok := sets[f[1]]; !ok {
				sets[f[1]] = []string{}
			}
		case "add":
			if len(f) >= 3 {
				sets[f[1]] = append(sets[f[1]], f[2])
			}
		}
	}
	for _, m := range sets {
		sort.Strings(m)
	}
	return sets, nil
}

// SyncSets is Sets.Sync for a one-shot caller that keeps no state between
// syncs (a benchmark, a tool): it always reads the kernel.
func SyncSets(sets ...Set) (int, error) { return new(Sets).Sync(sets...) }

// Sets is tabby's view of its ipsets: what the last sync left, so that the
// event path can diff against it instead of running `ipset save`. The
// kernel holds one namespace of sets, so a daemon holds one Sets.
type Sets struct {
	mu    sync.Mutex
	known map[string][]string // nil: not synced yet, or the last sync failed
}

// Sync makes each set hold exactly its members. A new set is created and
// filled before anything can name it; an existing one gets only the members
// it gains and loses, so a change costs the same however big the set is (a
// host's thousandth endpoint is one add). Each add or delete is atomic, and
// a member moving between sets is in neither for an instant at worst: a
// dropped packet, never an open one. It reports how many sets it changed.
func (k *Sets) Sync(sets ...Set) (int, error) { return k.sync(false, sets) }

// SyncKnown is Sync that compares with what the last sync left instead of
// running `ipset save` (the event path; the periodic resync uses Sync and
// so repairs changes made by others).
func (k *Sets) SyncKnown(sets ...Set) (int, error) { return k.sync(true, sets) }

func (k *Sets) sync(useKnown bool, sets []Set) (changed int, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	cur := k.known
	if !useKnown || cur == nil {
		if cur, err = currentSets(); err != nil {
			return 0, err
		}
	}
	next := map[string][]string{}
	for name, m := range cur {
		next[name] = m
	}
	defer func() {
		if err != nil {
			k.known = nil
		} else {
			k.known = next
		}
	}()
	var in bytes.Buffer
	var deltas []delta
	for _, s := range sets {
		if !strings.HasPrefix(s.Name, SetPrefix) || len(s.Name) > 31 {
			return 0, fmt.Errorf("ipset %q: name must start with %s and be at most 31 characters", s.Name, SetPrefix)
		}
		if err := oneToken(s.Name); err != nil {
			return 0, fmt.Errorf("ipset name: %w", err)
		}
		if err := oneToken(s.Type); err != nil {
			return 0, fmt.Errorf("ipset %s type: %w", s.Name, err)
		}
		want := make([]string, 0, len(s.Members))
		for _, m := range s.Members {
			if err := oneToken(m); err != nil {
				return 0, fmt.Errorf("ipset %s member: %w", s.Name, err)
			}
			want = append(want, hostForm(m))
		}
		sort.Strings(want)
		want = slices.Compact(want)
		have, exists := cur[s.Name]
		next[s.Name] = want
		if exists && equal(have, want) {
			continue
		}
		changed++
		if exists {
			deltas = append(deltas, delta{name: s.Name, have: have, want: want})
			continue
		}
		writeCreate(&in, s)
		writeDelta(&in, s.Name, nil, want)
	}
	if changed == 0 {
		return 0, nil
	}
	// Members of existing sets go over netlink: no process to start, which
	// is most of what programming one new endpoint costs. Anything netlink
	// cannot do goes to the restore below instead.
	for _, d := range deltas {
		if d.size() > netlinkMax || netlinkDelta(d) != nil {
			writeDelta(&in, d.name, d.have, d.want)
		}
	}
	if in.Len() == 0 {
		return changed, nil
	}
	// One restore for every changed set.
	cmd := exec.Command("ipset", "restore")
	cmd.Stdin = &in
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("ipset restore: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return changed, nil
}

func writeCreate(in *bytes.Buffer, s Set) {
	fam := "inet"
	if s.Family == V6 {
		fam = "inet6"
	}
	fmt.Fprintf(in, "create %s %s family %s maxelem 1048576 -exist\n", s.Name, s.Type, fam)
}

// Patch adds and deletes members of a set that an earlier sync made, over
// netlink, and records them as known: the event path's shortcut when only
// a few members change (the daemon's incremental pass). The next Sync or
// SyncKnown diffs against the result, so a patch is never undone by
// mistake. It fails, changing nothing it knows of, when the set is unknown
// (then a full sync is needed).
func (k *Sets) Patch(name string, add, del []string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	have, ok := k.known[name]
	if !ok {
		return fmt.Errorf("ipset %s: not known yet", name)
	}
	// have is sorted: insert and remove by binary search, so a patch costs
	// the same whatever the set's size (no map or sort of all members).
	want := slices.Clone(have)
	var ops []func() error
	for _, d := range del {
		m := hostForm(d)
		if i, found := slices.BinarySearch(want, m); found {
			want = slices.Delete(want, i, i+1)
			ops = append(ops, func() error { return netlinkMember(name, m, false) })
		}
	}
	for _, a := range add {
		m := hostForm(a)
		if i, found := slices.BinarySearch(want, m); !found {
			want = slices.Insert(want, i, m)
			ops = append(ops, func() error { return netlinkMember(name, m, true) })
		}
	}
	for _, op := range ops {
		if err := op(); err != nil {
			k.known = nil // what the kernel holds is uncertain now: read it next time
			return fmt.Errorf("ipset %s: %w", name, err)
		}
	}
	k.known[name] = want
	return nil
}

// delta is a set's change from have to want (both sorted).
type delta struct {
	name       string
	have, want []string
}

// netlinkMax is the largest delta sent over netlink, one request (and one
// socket) per member: ~30 us each, against a few ms to start `ipset
// restore`, which then takes a member in ~1 us. Larger deltas (a daemon
// restarted on a host whose endpoints changed by thousands) go to the
// restore: 90,000 members over netlink took 2.8 s of CPU.
const netlinkMax = 256

// size is how many members the delta adds and deletes.
func (d delta) size() int {
	n := 0
	diff(d.have, d.want, func(string, bool) { n++ })
	return n
}

// netlinkMember adds (or deletes) one member, with -exist semantics.
func netlinkMember(set, m string, add bool) error {
	e, err := ipsetEntry(m)
	if err != nil {
		return err
	}
	if add {
		return netlink.IpsetAdd(set, e)
	}
	return netlink.IpsetDel(set, e)
}

// netlinkDelta applies a delta with the kernel's ipset netlink protocol,
// adds and deletes with -exist semantics (Replace), so a retry after a
// partial failure is harmless.
func netlinkDelta(d delta) error {
	var err error
	diff(d.have, d.want, func(m string, add bool) {
		if err == nil {
			err = netlinkMember(d.name, m, add)
		}
	})
	return err
}

// ipProtocols are the protocols of hash:ip,port members (PROTO:PORT).
var ipProtocols = map[string]uint8{"tcp": 6, "udp": 17, "sctp": 132}

// ipsetEntry parses a member as ipset prints it: ADDR[/LEN][,IFACE] or,
// of a hash:ip,port set, ADDR,PROTO:PORT.
func ipsetEntry(m string) (*netlink.IPSetEntry, error) {
	addr, iface, _ := strings.Cut(m, ",")
	e := &netlink.IPSetEntry{IFace: iface, Replace: true}
	if proto, port, ok := strings.Cut(iface, ":"); ok {
		num, known := ipProtocols[proto]
		p, err := strconv.ParseUint(port, 10, 16)
		if !known || err != nil {
			return nil, fmt.Errorf("ipset member %q", m)
		}
		p16 := uint16(p)
		e.IFace, e.Protocol, e.Port = "", &num, &p16
	}
	if ip, n, err := net.ParseCIDR(addr); err == nil {
		ones, _ := n.Mask.Size()
		e.IP, e.CIDR = ip, uint8(ones)
	} else if ip := net.ParseIP(addr); ip != nil {
		e.IP, e.CIDR = ip, 32
		if ip.To4() == nil {
			e.CIDR = 128
		}
	} else {
		return nil, fmt.Errorf("ipset member %q", m)
	}
	return e, nil
}

// diff calls f for each member to delete (add false) and to add (true).
func diff(have, want []string, f func(m string, add bool)) {
	i, j := 0, 0
	for i < len(have) || j < len(want) {
		switch {
		case j == len(want) || (i < len(have) && have[i] < want[j]):
			f(have[i], false)
			i++
		case i == len(have) || want[j] < have[i]:
			f(want[j], true)
			j++
		default:
			i++
			j++
		}
	}
}

// writeDelta writes the `ipset restore` lines that take a set from have to
// want (both sorted).
func writeDelta(in *bytes.Buffer, name string, have, want []string) {
	diff(have, want, func(m string, add bool) {
		op := "del"
		if add {
			op = "add"
		}
		fmt.Fprintf(in, "%s %s %s -exist\n", op, name, m)
	})
}

// Destroy removes a set tabby no longer needs (it must not be referenced).
func (k *Sets) Destroy(name string) error {
	if !strings.HasPrefix(name, SetPrefix) {
		return fmt.Errorf("ipset %s is not tabby's", name)
	}
	sets, err := currentSets()
	if err != nil {
		return err
	}
	if _, ok := sets[name]; ok {
		if out, err := exec.Command("ipset", "destroy", name).CombinedOutput(); err != nil {
			return fmt.Errorf("ipset destroy %s: %v: %s", name, err, out)
		}
	}
	k.mu.Lock()
	delete(k.known, name)
	k.mu.Unlock()
	return nil
}

// List returns the names of tabby's sets that exist in the kernel.
func (k *Sets) List() ([]string, error) {
	sets, err := currentSets()
	if err != nil {
		return nil, err
	}
	return sortedNames(sets), nil
}

// Known lists tabby's sets as the last sync left them, reading the kernel
// only when no sync has succeeded yet.
func (k *Sets) Known() ([]string, error) {
	k.mu.Lock()
	if k.known != nil {
		defer k.mu.Unlock()
		return sortedNames(k.known), nil
	}
	k.mu.Unlock()
	return k.List()
}

func sortedNames(sets map[string][]string) []string {
	names := make([]string, 0, len(sets))
	for n := range sets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// hostForm writes a host prefix the way `ipset save` prints it (10.0.0.1, not
// 10.0.0.1/32; also as the first part of a hash:net,iface member), so
// unchanged sets compare equal.
func hostForm(m string) string {
	if addr, rest, ok := strings.Cut(m, ","); ok {
		return hostForm(addr) + "," + rest
	}
	if strings.HasSuffix(m, "/32") && !strings.Contains(m, ":") {
		return strings.TrimSuffix(m, "/32")
	}
	if strings.HasSuffix(m, "/128") {
		return strings.TrimSuffix(m, "/128")
	}
	return m
}

// oneToken refuses what could make one word of `ipset restore` input into
// more: whitespace would add options (a "timeout 0", a "comment"), a
// newline or NUL a command of its own (a "flush", a "destroy"), a quote
// would change how the rest of the line reads. What tabby renders never
// contains these; this is the last check before the text leaves the
// process, whatever an etcd record said.
func oneToken(s string) error {
	if s == "" {
		return fmt.Errorf("an empty word: refused, ipset would read the next word in its place")
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '"' || r == '\'' || r == '#' }); i >= 0 {
		return fmt.Errorf("%q holds %q: refused, it would not be one word of ipset's input", s, s[i])
	}
	return nil
}
