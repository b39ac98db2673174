package bgp

import (
	"fmt"
	"net"
	"slices"

	api "github.com/osrg/gobgp/v3/api"
)

// Peers with OwnRoutesOnly get only this speaker's own prefixes: a global
// export policy rejects every iBGP-learned route towards the members of one
// neighbor set. Route reflectors need it between each other. GoBGP v3.37.0
// strips ORIGINATOR_ID and CLUSTER_LIST from routes it reflects to a
// non-client, so two reflectors that pass their clients' routes to each
// other each come to prefer the other's copy (lower router ID), and when
// the client withdraws, neither sends the other a withdrawal (an iBGP path
// may not go on to a non-client, and GoBGP then withdraws the old one only
// if it was local or eBGP): the route stays in both, and in every client,
// forever. Making the reflectors each other's clients fixes two but not
// three. Every client peers with every reflector, so a reflector needs
// nothing from another but that one's own blocks.
const (
	ownOnlySet    = "tabby-own-routes-only"
	ownOnlyPolicy = "tabby-own-routes-only"
)

// ownOnlyPlaceholder keeps the neighbor set from ever being empty: GoBGP
// reads an empty neighbor set as matching every neighbor. No session has
// the address 0.0.0.0.
const ownOnlyPlaceholder = "0.0.0.0/32"

// installOwnOnly creates the neighbor set, the policy and its global
// export assignment (default accept), once at start.
func (s *Speaker) installOwnOnly() error {
	ctx, cancel := apiCtx()
	defer cancel()
	set := &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: ownOnlySet, List: []string{ownOnlyPlaceholder}}
	if err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: set}); err != nil {
		return fmt.Errorf("add neighbor set %s: %w", ownOnlySet, err)
	}
	policy := &api.Policy{Name: ownOnlyPolicy, Statements: []*api.Statement{{
		Name: ownOnlyPolicy + "-internal",
		Conditions: &api.Conditions{
			NeighborSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: ownOnlySet},
			RouteType:   api.Conditions_ROUTE_TYPE_INTERNAL,
		},
		Actions: &api.Actions{RouteAction: api.RouteAction_REJECT},
	}}}
	if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: policy}); err != nil {
		return fmt.Errorf("add policy %s: %w", ownOnlyPolicy, err)
	}
	err := s.srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name: "global", Direction: api.PolicyDirection_EXPORT, Policies: []*api.Policy{{Name: ownOnlyPolicy}},
		DefaultAction: api.RouteAction_ACCEPT,
	}})
	if err != nil {
		return fmt.Errorf("assign policy %s: %w", ownOnlyPolicy, err)
	}
	return nil
}

// setOwnOnly makes the neighbor set the addresses of want's OwnRoutesOnly
// peers. It runs before peers are added, so a new peer's first UPDATEs
// already follow it (GoBGP does not re-run export policies on routes it
// has sent; a peer whose OwnRoutesOnly changes gets a new session).
func (s *Speaker) setOwnOnly(want map[string]Peer) error {
	list := []string{ownOnlyPlaceholder}
	for addr, p := range want {
		if !p.OwnRoutesOnly {
			continue
		}
		bits := 32
		if net.ParseIP(addr).To4() == nil {
			bits = 128
		}
		list = append(list, fmt.Sprintf("%s/%d", addr, bits))
	}
	slices.Sort(list)
	if slices.Equal(list, s.st.ownOnly) {
		return nil
	}
	// In place: GoBGP's policy holds the set it was built with, so a
	// replaced set would never be consulted.
	var add, del []string
	for _, a := range list {
		if !slices.Contains(s.st.ownOnly, a) {
			add = append(add, a)
		}
	}
	for _, a := range s.st.ownOnly {
		if !slices.Contains(list, a) {
			del = append(del, a)
		}
	}
	ctx, cancel := apiCtx()
	defer cancel()
	if len(add) > 0 {
		set := &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: ownOnlySet, List: add}
		if err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: set}); err != nil {
			return fmt.Errorf("add %v to neighbor set %s: %w", add, ownOnlySet, err)
		}
	}
	if len(del) > 0 {
		set := &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: ownOnlySet, List: del}
		if err := s.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: set}); err != nil {
			return fmt.Errorf("remove %v from neighbor set %s: %w", del, ownOnlySet, err)
		}
	}
	s.st.ownOnly = list
	return nil
}
