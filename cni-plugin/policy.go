package main

import (
	"context"
	"fmt"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/netconf"
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
	if !nodestatus.Installed(c.conf.State()) {
		c.log.Debugf("no tabby-node on this host (no status socket in %s): no policy to wait for", c.conf.State())
		return nil
	}
	d := DefaultPolicyTimeout
	if c.conf.PolicyTimeout > 0 {
		d = time.Duration(c.conf.PolicyTimeout * float64(time.Second))
	}
	start := time.Now()
	// Not the ADD's etcd deadline: this wait has its own bound.
	if err := nodestatus.WaitReady(context.Background(), c.conf.State(), ep.HostInterface, ep.ContainerID, d); err != nil {
		return &netconf.Error{Code: netconf.CodeTryAgain, Msg: fmt.Sprintf("policy for %s is not in force: %v", c.workload, err)}
	}
	c.log.Debugf("policy in force after %v", time.Since(start))
	return nil
}

// nodeReady checks etcd and, where tabby-node is installed, that it answers.
func (c *call) nodeReady(ctx context.Context) error {
	if _, _, err := c.kv.List(ctx, model.PoolPrefix, true); err != nil {
		return err
	}
	if nodestatus.Installed(c.conf.State()) {
		if _, err := nodestatus.Get(ctx, c.conf.State()); err != nil {
			return &netconf.Error{Code: netconf.CodeTryAgain, Msg: err.Error()}
		}
	}
	return nil
}
