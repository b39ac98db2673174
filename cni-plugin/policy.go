package main

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/nodestatus"
)

// DefaultPolicyTimeout bounds the wait for the node daemon when the netconf
// does not say (policy_setup_timeout_seconds).
const DefaultPolicyTimeout = 10 * time.Second

// waitPolicy returns once this host's tabby-node has the endpoint's rules in
// force. Until then the workload's interface is dropped by the daemon's
// dispatch (fail closed), so there is no window of open traffic either way.
// A host without tabby-node (no status socket in the state dir) has no
// packet filter to wait for.
func (c *call) waitPolicy(ctx context.Context, ep *model.Endpoint) error {
	if !nodestatus.Installed(c.Conf.State()) {
		c.Log.Debug("no tabby-node on this host (no status socket): no policy to wait for", "state_dir", c.Conf.State())
		return nil
	}
	d := DefaultPolicyTimeout
	if c.Conf.PolicyTimeout > 0 {
		d = time.Duration(c.Conf.PolicyTimeout * float64(time.Second))
	}
	start := time.Now()
	// Not the ADD's etcd deadline: this wait has its own bound.
	if err := nodestatus.WaitEndpoint(context.Background(), c.Conf.State(), nodestatus.Endpoint{Key: c.epKey, Iface: ep.HostInterface, Container: ep.ContainerID, Profiles: ep.Profiles}, d); err != nil {
		// tabby-node down is "try again"; a daemon that answers but cannot
		// put the rules in force (in time, or at all) is its own code.
		code := cnierr.PolicyNotInForce
		if errors.Is(err, nodestatus.ErrDaemonDown) {
			code = cnierr.TryAgain
		}
		return cnierr.New(code, "policy for %s is not in force: %v", c.workload, err)
	}
	c.Log.Debug("policy in force", "after", time.Since(start))
	return nil
}

// refuseUnenforceableV6 fails before anything is created when the workload
// gets an IPv6 address and this host's tabby-node reports that it cannot
// enforce IPv6 rules (ip6tables unusable): without an IPv6 filter the
// interface would forward IPv6 for as long as the ADD took to fail.
func (c *call) refuseUnenforceableV6(ctx context.Context, addrs []net.IPNet) error {
	v6 := false
	for _, a := range addrs {
		v6 = v6 || a.IP.To4() == nil
	}
	if !v6 || !nodestatus.Installed(c.Conf.State()) {
		return nil
	}
	st, err := nodestatus.Get(ctx, c.Conf.State())
	if err != nil {
		return cnierr.New(cnierr.TryAgain, "%v", err)
	}
	if st.IPv6PolicyError != "" {
		return cnierr.New(cnierr.PolicyNotInForce, "policy for %s cannot be put in force: this host's tabby-node cannot enforce IPv6 rules: %s", c.workload, st.IPv6PolicyError)
	}
	return nil
}

// nodeReady checks etcd and, where tabby-node is installed, that it answers.
func (c *call) nodeReady(ctx context.Context) error {
	if _, _, err := c.KV.List(ctx, model.PoolPrefix, true); err != nil {
		return err
	}
	if nodestatus.Installed(c.Conf.State()) {
		if _, err := nodestatus.Get(ctx, c.Conf.State()); err != nil {
			return &cnierr.Error{Code: cnierr.TryAgain, Msg: err.Error()}
		}
	}
	return nil
}
