package main

import (
	"context"

	"github.com/tabby-net/tabby/pkg/model"
)

// waitPolicy returns once this host's node daemon has the endpoint's rules in
// force. Until tabby-node enforces policy, there is nothing to wait for.
func (c *call) waitPolicy(ctx context.Context, ep *model.Endpoint) error { return nil }

// nodeReady checks etcd (and, with tabby-node, the daemon).
func (c *call) nodeReady(ctx context.Context) error {
	_, _, err := c.kv.List(ctx, model.PoolPrefix, true)
	return err
}
