package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/tabby-net/tabby/pkg/store"
)

// errNoSuchNetwork is Docker's 404 for a network ID.
var errNoSuchNetwork = errors.New("Docker has no such network")

// sweepOrphans removes this host's network records that Docker does not
// know, as DeleteNetwork would (leftover endpoints, the profile reference,
// the record). They come from a CreateNetwork that committed but whose
// answer never reached dockerd (tabby-docker killed in between): dockerd
// saw the call fail and never calls DeleteNetwork. Records younger than
// grace are left alone, since Docker stores a network only after
// CreateNetwork has returned. It returns how many it removed.
func (d *Driver) sweepOrphans(ctx context.Context, grace time.Duration) (int, error) {
	if d.Docker == nil {
		return 0, nil
	}
	host, err := d.host()
	if err != nil {
		return 0, err
	}
	recs, err := store.ListJSON[Network](ctx, d.KV, networkPrefix+host+"/")
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, rec := range recs {
		if time.Since(time.Unix(rec.Created, 0)) < grace {
			continue
		}
		if _, err := d.Docker.NetworkName(ctx, rec.ID); !errors.Is(err, errNoSuchNetwork) {
			continue // Docker has it, or cannot say: keep it
		}
		if err := (NetworkDriver{d}).DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: rec.ID}); err != nil {
			return removed, fmt.Errorf("remove orphaned network %s: %w", rec.ID, err)
		}
		d.Log.Warn("removed a network Docker does not know (its CreateNetwork's answer was lost)", "network", rec.ID)
		removed++
	}
	return removed, nil
}

// sweepEvery runs sweepOrphans now and then every grace until ctx ends.
func (d *Driver) sweepEvery(ctx context.Context, grace time.Duration) {
	t := time.NewTicker(max(grace, time.Second))
	defer t.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, callTimeout)
		if _, err := d.sweepOrphans(sctx, grace); err != nil && ctx.Err() == nil {
			d.Log.Warn("sweep of orphaned networks", "err", err)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
