package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// errNoSuchNetwork is Docker's 404 for a network ID.
var errNoSuchNetwork = errors.New("Docker has no such network")

// sweepOrphans removes this host's network records that Docker does not
// know (then its pool references that no network explains, sweepPoolRefs), as DeleteNetwork would (leftover endpoints, the profile reference,
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
	used := map[string]bool{} // subnets of this host's networks that stay
	for _, rec := range recs {
		if time.Since(time.Unix(rec.Created, 0)) >= grace {
			if _, err := d.Docker.NetworkName(ctx, rec.ID); errors.Is(err, errNoSuchNetwork) {
				if err := (NetworkDriver{d}).DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: rec.ID}); err != nil {
					return removed, fmt.Errorf("remove orphaned network %s: %w", rec.ID, err)
				}
				d.Log.Warn("removed a network Docker does not know (its CreateNetwork's answer was lost)", "network", rec.ID)
				removed++
				continue
			}
		}
		for _, s := range rec.Subnets {
			if _, n, err := net.ParseCIDR(s); err == nil {
				used[n.String()] = true
			}
		}
	}
	n, err := d.sweepPoolRefs(ctx, host, used, grace)
	removed += n
	if err != nil {
		return removed, err
	}
	n, err = d.sweepProfileRefs(ctx, host, grace)
	return removed + n, err
}

// sweepProfileRefs drops this host's references to tabby-docker's profiles
// that name no network record of this host, once older than grace (a
// CreateNetwork killed between taking the reference and writing the
// record), and removes a profile left without references.
func (d *Driver) sweepProfileRefs(ctx context.Context, host string, grace time.Duration) (int, error) {
	owners, _, err := d.KV.List(ctx, profileOwnerPrefix, false)
	if err != nil {
		return 0, err
	}
	dropped := 0
	for _, kv := range owners {
		var own Owner
		if err := store.DecodeJSON(kv.Value, &own); err != nil {
			return dropped, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		name := strings.TrimPrefix(kv.Key, profileOwnerPrefix)
		for _, r := range own.Refs {
			id, ok := strings.CutPrefix(r, host+"/")
			if !ok || time.Since(time.Unix(own.Since[r], 0)) < grace {
				continue
			}
			rec, err := getNetwork(ctx, d.KV, host, id)
			if err != nil || rec != nil {
				continue
			}
			removed, err := ReleaseProfile(ctx, d.KV, name, r)
			if err != nil {
				return dropped, fmt.Errorf("drop stale reference %s of profile %s: %w", r, name, err)
			}
			d.Log.Warn("dropped a profile reference of a network that was never recorded", "profile", name, "ref", r, "profileRemoved", removed)
			dropped++
		}
	}
	return dropped, nil
}

// sweepPoolRefs drops this host's references to tabby-docker's pools whose
// subnet no network of this host uses, once older than grace, and removes
// a pool left without references (ReleasePool). Such a reference comes
// from a RequestPool whose answer was lost: dockerd never learned the pool
// ID, so no ReleasePool ever names it. A RequestPool is followed by its
// CreateNetwork at once; grace covers the moment in between.
func (d *Driver) sweepPoolRefs(ctx context.Context, host string, used map[string]bool, grace time.Duration) (int, error) {
	owners, _, err := d.KV.List(ctx, poolOwnerPrefix, false)
	if err != nil {
		return 0, err
	}
	dropped := 0
	for _, kv := range owners {
		cidr := model.UnescapeCIDR(strings.TrimPrefix(kv.Key, poolOwnerPrefix))
		if used[cidr] {
			continue
		}
		var own Owner
		if err := store.DecodeJSON(kv.Value, &own); err != nil {
			return dropped, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		var stale []string
		for _, r := range own.Refs {
			if strings.HasPrefix(r, host+"/") && time.Since(time.Unix(own.Since[r], 0)) >= grace {
				stale = append(stale, r)
			}
		}
		if len(stale) == 0 {
			continue
		}
		removed, err := ReleasePool(ctx, d.KV, cidr, func(r string) bool { return slices.Contains(stale, r) })
		if err != nil {
			return dropped, fmt.Errorf("drop stale references %v of pool %s: %w", stale, cidr, err)
		}
		d.Log.Warn("dropped references of pool requests whose answer was lost", "pool", cidr, "refs", stale, "poolRemoved", removed)
		dropped += len(stale)
	}
	return dropped, nil
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
