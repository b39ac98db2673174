package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/test/lab"
)

// Every code in the table is answered by the real plugin for the cause the
// README gives, and a failed ADD leaves nothing behind. A code added to the
// table without a case here fails the test.
func TestEveryErrorCode(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 2})
	h, h2 := e.l.Hosts[0], e.l.Hosts[1]
	ctx := context.Background()
	e.pool("10.0.0.0/16")
	e.pool("10.8.0.0/16", "--disabled")
	e.pool("10.9.0.0/30", "--block-size", "30")
	conf := e.conf(h, "", "", "")
	_, ns := e.l.AddContainer(h, "codes")
	seen := map[cnierr.Code]bool{}
	expect := func(t *testing.T, cmd, cid, args string, conf []byte, want cnierr.Code, says string) {
		t.Helper()
		o := e.plugin(h, cmd, cid, ns, "eth0", args, conf)
		if cnierr.Code(o.ErrCode) != want || !strings.Contains(o.ErrMsg, says) {
			t.Fatalf("%s: code %d %q, want %d saying %q", cmd, o.ErrCode, o.ErrMsg, want, says)
		}
		t.Logf("code %d: %s", o.ErrCode, o.ErrMsg)
		seen[want] = true
		if cmd == "ADD" {
			if err := e.Leftovers(h); err != nil {
				t.Fatal(err)
			}
		}
	}

	t.Run("4 relative log_file", func(t *testing.T) {
		bad := []byte(strings.Replace(string(conf), `"log_file":"`+e.CNILog(h)+`"`, `"log_file":"cni.log"`, 1))
		expect(t, "ADD", "c4", "", bad, cnierr.BadConfig, "relative path")
	})
	t.Run("7 bad CNI_ARGS", func(t *testing.T) {
		expect(t, "ADD", "c7", "IP=10.0.0.999", conf, cnierr.BadArgs, "10.0.0.999")
	})
	t.Run("11 etcd unreachable", func(t *testing.T) {
		bad := []byte(strings.Replace(string(conf), e.l.EtcdURL, "http://198.19.0.254:1", 1))
		expect(t, "ADD", "c11", "", bad, cnierr.TryAgain, "")
	})
	t.Run("100 CHECK finds the container broken", func(t *testing.T) {
		prev := e.plugin(h, "ADD", "c100", ns, "eth0", "", conf)
		addrOf(t, prev)
		e.l.MustExec(filepath.Base(ns), "ip", "route", "del", "default")
		expect(t, "CHECK", "c100", "", withPrev(t, conf, prev.Stdout), cnierr.Internal, "default route")
		if o := e.plugin(h, "DEL", "c100", ns, "eth0", "", conf); o.ExitCode != 0 {
			t.Fatalf("DEL: %s", o.ErrMsg)
		}
		e.assertClean(h)
	})
	t.Run("101 address in use", func(t *testing.T) {
		addrOf(t, e.plugin(h, "ADD", "c101", ns, "eth0", "IP=10.0.0.7", conf))
		_, ns2 := e.l.AddContainer(h, "codes2")
		o := e.plugin(h, "ADD", "c101b", ns2, "eth0", "IP=10.0.0.7", conf)
		if cnierr.Code(o.ErrCode) != cnierr.AddressInUse || !strings.Contains(o.ErrMsg, "c101") {
			t.Fatalf("code %d %q, want 101 naming the holder", o.ErrCode, o.ErrMsg)
		}
		seen[cnierr.AddressInUse] = true
		if o := e.plugin(h, "DEL", "c101", ns, "eth0", "", conf); o.ExitCode != 0 {
			t.Fatalf("DEL: %s", o.ErrMsg)
		}
		e.assertClean(h)
	})
	t.Run("102 address outside every pool", func(t *testing.T) {
		expect(t, "ADD", "c102", "IP=172.31.0.1", conf, cnierr.NoPool, "outside every pool")
	})
	t.Run("103 pool exhausted", func(t *testing.T) {
		fill := &ipam.IPAM{KV: e.kv, Host: h.Name}
		n := 0
		for ; ; n++ {
			_, _, err := fill.Assign(ctx, ipam.Request{Network: "filler", ContainerID: fmt.Sprintf("f%d", n), IPv4: true, Pools4: []string{"10.9.0.0/30"}})
			if cnierr.CodeOf(err) == cnierr.PoolExhausted {
				break
			}
			if err != nil || n > 4 {
				t.Fatalf("filling a /30 pool: %d addresses, %v", n, err)
			}
		}
		// The handles the filler holds are not the ADD's leftovers.
		full := e.conf(h, "", "", `,"ipv4_pools":["10.9.0.0/30"]`)
		o := e.plugin(h, "ADD", "c103", ns, "eth0", "", full)
		if cnierr.Code(o.ErrCode) != cnierr.PoolExhausted || !strings.Contains(o.ErrMsg, "10.9.0.0/30") {
			t.Fatalf("code %d %q, want 103", o.ErrCode, o.ErrMsg)
		}
		seen[cnierr.PoolExhausted] = true
		for i := range n {
			if err := fill.Release(ctx, "filler", fmt.Sprintf("f%d", i)); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("104 pool disabled", func(t *testing.T) {
		expect(t, "ADD", "c104", "IP=10.8.0.5", conf, cnierr.PoolDisabled, "disabled")
	})
	t.Run("105 another host's block under strict affinity", func(t *testing.T) {
		other := &ipam.IPAM{KV: e.kv, Host: h2.Name}
		_, out, err := other.Assign(ctx, ipam.Request{Network: "other", ContainerID: "o1", IPv4: true})
		if err != nil {
			t.Fatal(err)
		}
		ip := out[0].IP.To4()
		ip[3]++
		strict := e.conf(h, "", "", `,"strict_affinity":true`)
		o := e.plugin(h, "ADD", "c105", ns, "eth0", "IP="+ip.String(), strict)
		if cnierr.Code(o.ErrCode) != cnierr.NotAffine || !strings.Contains(o.ErrMsg, "strict affinity") {
			t.Fatalf("code %d %q, want 105", o.ErrCode, o.ErrMsg)
		}
		seen[cnierr.NotAffine] = true
		if err := other.Release(ctx, "other", "o1"); err != nil {
			t.Fatal(err)
		}
		if err := e.Leftovers(h); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("120 unreadable record", func(t *testing.T) {
		key := model.PoolKey("10.7.0.0/16")
		if _, err := e.kv.Txn(ctx, nil, []store.Op{store.Put(key, []byte("{not json"))}); err != nil {
			t.Fatal(err)
		}
		// An address of that pool: an ADD that can take one from its host's
		// own block decides from its cache and reads no other pool.
		expect(t, "ADD", "c120", "IP=10.7.0.5", conf, cnierr.DatastoreFormat, key)
		if _, err := e.kv.Txn(ctx, nil, []store.Op{store.Delete(key)}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("110 policy not in force in time", func(t *testing.T) {
		e.startNode(h)
		e.Eventually(10*time.Second, func() error {
			st, err := e.status(h)
			if err != nil || !st.Ready {
				return fmt.Errorf("tabby-node not ready: %v", err)
			}
			return nil
		})
		// tabby-node answers, but no node learns and programs an endpoint in
		// a microsecond: the ADD must fail with 110, not 11, and roll back.
		hurried := e.conf(h, "", `,"policy_setup_timeout_seconds":0.000001`, "")
		expect(t, "ADD", "c110", "", hurried, cnierr.PolicyNotInForce, "not in force")
	})
	for _, c := range cnierr.Codes {
		if !seen[c.Code] {
			t.Errorf("code %d (%s) has no case here", c.Code, c.Meaning)
		}
	}
}

// DEL releases the addresses and the record before it removes the veth, so
// a teardown that fails (and is reported: the runtime retries) leaks nothing;
// the retry removes the veth.
func TestCNIDelTeardownFailureLeaksNothing(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	conf := e.conf(h, "", "", "")
	_, ns := e.l.AddContainer(h, "td")
	addrOf(t, e.plugin(h, "ADD", "td", ns, "eth0", "", conf))
	// A netns path under a regular file cannot even be looked at (ENOTDIR):
	// the teardown fails, not as "namespace gone".
	o := e.plugin(h, "DEL", "td", "/etc/hostname/netns", "eth0", "", conf)
	if o.ExitCode == 0 || !strings.Contains(o.ErrMsg, "removing veth") {
		t.Fatalf("DEL with a broken netns path: exit %d %q, want a teardown error", o.ExitCode, o.ErrMsg)
	}
	if hs := e.keys(model.HandlePrefix); len(hs) != 0 {
		t.Fatalf("handles after a DEL whose teardown failed: %v", hs)
	}
	if eps := e.keys(model.HostWorkloadPrefix(h.Name)); len(eps) != 0 {
		t.Fatalf("endpoint records after a DEL whose teardown failed: %v", eps)
	}
	if n := strings.Count(e.l.MustExec(h.NS, "ip", "-o", "link"), "tby"); n != 1 {
		t.Fatalf("%d veths, want the one whose teardown failed", n)
	}
	if o := e.plugin(h, "DEL", "td", ns, "eth0", "", conf); o.ExitCode != 0 {
		t.Fatalf("retried DEL: %s", o.ErrMsg)
	}
	e.assertClean(h)
}
