package main

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// dockerHas answers as the Engine API does: known networks by name, 404
// (errNoSuchNetwork) for the rest, and any other failure when down.
type dockerHas struct {
	nets map[string]bool
	down bool
}

func (d *dockerHas) NetworkName(_ context.Context, id string) (string, error) {
	switch {
	case d.down:
		return "", errors.New("Docker API: connection refused")
	case d.nets[id]:
		return id, nil
	}
	return "", fmt.Errorf("Docker API: network %s: %w", id, errNoSuchNetwork)
}

// TestSweepOrphans: a network record whose CreateNetwork's answer was lost
// (Docker does not know the network) goes, with its profile reference,
// once older than the grace, and so does a pool whose RequestPool's answer
// was lost (no network of the host uses its subnet) and a profile
// reference of a network never recorded; a network Docker has stays, and so does
// everything while Docker cannot be asked.
func TestSweepOrphans(t *testing.T) {
	kv := newKV(t)
	docker := &dockerHas{nets: map[string]bool{"kept": true}}
	h := newHost(t, kv, "h1", nil)
	h.d.Docker = docker
	// Pools: one for the networks, one whose RequestPool's answer was lost
	// (no network ever names it).
	for _, subnet := range []string{"10.6.0.0/24", "10.7.0.0/24"} {
		h.must("/IpamDriver.RequestPool", ipam.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: subnet}, nil)
	}
	for _, id := range []string{"kept", "lost"} {
		h.must("/NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: id, IPv4Data: ipv4Data("10.6.0.0/24"),
			Options: map[string]interface{}{"com.docker.network.generic": map[string]interface{}{optProfile: "P"}}}, nil)
	}
	ctx := context.Background()
	// A CreateNetwork killed between taking profile Q and writing its record.
	if _, err := EnsureProfile(ctx, kv, "Q", "h1/ghost"); err != nil {
		t.Fatal(err)
	}
	if n, err := h.d.sweepOrphans(ctx, time.Hour); n != 0 || err != nil {
		t.Fatalf("sweep within the grace removed %d (%v)", n, err)
	}
	// Docker down: both networks stay; the lost pool request needs no
	// Docker to tell (no network of this host uses its subnet).
	docker.down = true
	if n, err := h.d.sweepOrphans(ctx, 0); n != 2 || err != nil {
		t.Fatalf("sweep with Docker down removed %d (%v), want the lost pool request and profile reference", n, err)
	}
	if k := keys(t, kv, model.ProfileKey("Q")); len(k) != 0 {
		t.Fatalf("profile Q, referenced by no network, is left: %v", k)
	}
	if k := keys(t, kv, model.PoolPrefix); len(k) != 1 || k[0] != model.PoolKey("10.6.0.0/24") {
		t.Fatalf("pools after the sweep: %v", k)
	}
	if k := keys(t, kv, networkPrefix); len(k) != 2 {
		t.Fatalf("network records with Docker down: %v", k)
	}
	docker.down = false
	if n, err := h.d.sweepOrphans(ctx, 0); n != 1 || err != nil {
		t.Fatalf("sweep removed %d (%v), want the lost network", n, err)
	}
	if k := keys(t, kv, networkPrefix); len(k) != 1 || k[0] != networkKey("h1", "kept") {
		t.Fatalf("network records after the sweep: %v", k)
	}
	var own Owner
	if _, err := store.GetJSON(ctx, kv, profileOwnerKey("P"), &own); err != nil || len(own.Refs) != 1 || own.Refs[0] != "h1/kept" {
		t.Fatalf("profile P's owner after the sweep: %+v (%v)", own, err)
	}
}
