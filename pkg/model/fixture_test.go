package model_test

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/selector"
	"github.com/tabby-net/tabby/pkg/store"
)

func readFixtureV1(t *testing.T) []model.FixtureRecord {
	t.Helper()
	recs, err := model.ReadFixture(filepath.Join("testdata", "fixture-v1"))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// kind is one kind of key: which record type it holds and the key that
// today's code builds for the decoded record (keys are the other half of
// the format: code finds records by building their keys).
type kind struct {
	name   string
	prefix string
	decode func(key string, b []byte) (rebuilt string, err error)
}

func strict[T any](b []byte) (T, error) {
	var v T
	d := json.NewDecoder(bytes.NewReader(b))
	// Today's types must know every field today's binaries wrote; a field
	// renamed or dropped later fails here (a field added later does not).
	d.DisallowUnknownFields()
	err := d.Decode(&v)
	return v, err
}

var kinds = []kind{
	{"schema", model.SchemaKey, func(k string, b []byte) (string, error) {
		_, err := strict[model.Schema](b)
		return model.SchemaKey, err
	}},
	{"pool", model.PoolPrefix, func(k string, b []byte) (string, error) {
		p, err := strict[model.Pool](b)
		if err == nil {
			err = p.Validate()
		}
		return model.PoolKey(p.CIDR), err
	}},
	{"block", model.BlockPrefix, func(k string, b []byte) (string, error) {
		v, err := strict[model.Block](b)
		return model.BlockKey(v.Pool, v.CIDR), err
	}},
	{"affinity", model.AffinityPrefix, func(k string, b []byte) (string, error) {
		v, err := strict[model.Affinity](b)
		return model.AffinityKey(v.Host, v.Block), err
	}},
	{"handle", model.HandlePrefix, func(k string, b []byte) (string, error) {
		v, err := strict[model.Handle](b)
		if err == nil && v.ID != model.HandleID(v.Network, v.ContainerID) {
			return "", errorf("handle id %q is not network.containerID", v.ID)
		}
		return model.HandleKey(v.Network, v.ContainerID), err
	}},
	{"node", model.NodePrefix, func(k string, b []byte) (string, error) {
		v, err := strict[model.Host](b)
		return model.NodeKey(v.Name), err
	}},
	{"host bgp peer", "", func(k string, b []byte) (string, error) {
		v, err := strict[model.BGPPeer](b)
		return model.HostBGPPeerKey(v.Host, v.IP), err
	}},
	{"endpoint", "", func(k string, b []byte) (string, error) {
		v, err := strict[model.Endpoint](b)
		if h, o, w, n, ok := model.ParseEndpointKey(k); !ok || h != v.Host || o != v.Orchestrator || w != v.Workload || n != v.Name {
			return "", errorf("ParseEndpointKey(%s) = %s %s %s %s %v", k, h, o, w, n, ok)
		}
		return v.Key(), err
	}},
	{"tag member", model.TagPrefix, func(k string, b []byte) (string, error) {
		v, err := strict[model.TagMember](b)
		h, o, w, n, _ := model.ParseEndpointKey(v.Endpoint)
		tag := strings.SplitN(strings.TrimPrefix(k, model.TagPrefix), "/", 2)[0]
		return model.TagMemberKey(tag, h, o, w, n), err
	}},
	{"member", model.MemberPrefix, func(k string, b []byte) (string, error) {
		v, err := strict[model.Member](b)
		h, o, w, n, _ := model.ParseEndpointKey(v.Endpoint)
		ns := strings.SplitN(strings.TrimPrefix(k, model.MemberPrefix), "/", 2)[0]
		if ns == "_" {
			ns = ""
		}
		return model.MemberKey(ns, h, o, w, n), err
	}},
	{"profile", model.ProfilePrefix, func(k string, b []byte) (string, error) {
		v, err := strict[model.Profile](b)
		return model.ProfileKey(v.Name), err
	}},
	{"policy", model.PolicyPrefix, func(k string, b []byte) (string, error) {
		v, err := strict[model.Policy](b)
		if err == nil {
			err = v.Validate()
		}
		return model.PolicyKey(v.Namespace, v.Name), err
	}},
	{"namespace", model.NamespacePrefix, func(k string, b []byte) (string, error) {
		v, err := strict[model.Namespace](b)
		return model.NamespaceKey(v.Name), err
	}},
	{"k8s pod", model.K8sPodPrefix, func(k string, b []byte) (string, error) {
		v, err := strict[model.K8sPod](b)
		return model.K8sPodKey(v.Namespace, v.Name), err
	}},
	{"bgp config", model.BGPConfigKey, func(k string, b []byte) (string, error) {
		_, err := strict[model.BGPConfig](b)
		return model.BGPConfigKey, err
	}},
	{"bgp peer", model.BGPPeerPrefix, func(k string, b []byte) (string, error) {
		v, err := strict[model.BGPPeer](b)
		return model.GlobalBGPPeerKey(v.IP), err
	}},
}

type fixtureErr string

func (e fixtureErr) Error() string { return string(e) }

func errorf(format string, a ...any) error {
	b, _ := json.Marshal(a)
	return fixtureErr(format + " " + string(b))
}

func kindOf(key string) *kind {
	switch {
	case strings.HasPrefix(key, model.HostPrefix) && strings.Contains(key, "/bgppeer/"):
		return &kinds[6]
	case strings.HasPrefix(key, model.HostPrefix):
		return &kinds[7]
	}
	for i := range kinds {
		if kinds[i].prefix != "" && strings.HasPrefix(key, kinds[i].prefix) {
			return &kinds[i]
		}
	}
	return nil
}

// Today's code decodes every record of the v1 fixture with its types (no
// field unknown to them), the records validate where a validator exists,
// and every key is the one today's key functions build for its record; the
// fixture holds every kind the layout has (the schema key aside: v1
// binaries wrote none). Re-encoding keeps every field: no data is lost when
// today's binaries rewrite a v1 record.
func TestFixtureV1Decodes(t *testing.T) {
	recs := readFixtureV1(t)
	seen := map[string]int{}
	for _, r := range recs {
		k := kindOf(r.Key)
		if k == nil {
			t.Errorf("%s: a key of no known kind", r.Key)
			continue
		}
		seen[k.name]++
		rebuilt, err := k.decode(r.Key, r.Value)
		if err != nil {
			t.Errorf("%s (%s): %v", r.Key, k.name, err)
			continue
		}
		if rebuilt != r.Key {
			t.Errorf("%s (%s): today's key for this record is %s", r.Key, k.name, rebuilt)
		}
	}
	for _, k := range kinds {
		if seen[k.name] == 0 && k.name != "schema" {
			t.Errorf("the fixture holds no %s record", k.name)
		}
	}
	names := make([]string, 0, len(seen))
	for n, c := range seen {
		names = append(names, n+"="+itoa(c))
	}
	sort.Strings(names)
	t.Logf("%d records: %s", len(recs), strings.Join(names, " "))

	// Round trip: decode into today's type, encode, compare as JSON values.
	for _, r := range recs {
		var typed any
		switch kindOf(r.Key).name {
		case "endpoint":
			typed = new(model.Endpoint)
		case "block":
			typed = new(model.Block)
		case "handle":
			typed = new(model.Handle)
		case "policy":
			typed = new(model.Policy)
		case "profile":
			typed = new(model.Profile)
		case "node":
			typed = new(model.Host)
		default:
			continue
		}
		if err := json.Unmarshal(r.Value, typed); err != nil {
			t.Fatal(err)
		}
		again, _ := json.Marshal(typed)
		var a, b any
		_ = json.Unmarshal(r.Value, &a)
		_ = json.Unmarshal(again, &b)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s changes when today's code rewrites it:\n was %s\n now %s", r.Key, r.Value, again)
		}
	}
	// The selectors stored in v1 policies still parse.
	for _, r := range recs {
		if kindOf(r.Key).name != "policy" {
			continue
		}
		var p model.Policy
		_ = json.Unmarshal(r.Value, &p)
		if _, err := selector.Parse(p.Selector); err != nil {
			t.Errorf("%s: selector %q: %v", r.Key, p.Selector, err)
		}
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// The v1 fixture in a real etcd: today's IPAM finds no leak or orphan in it
// (every allocation has its handle and its endpoint), reads its pools, and
// allocates next to the v1 allocations and releases one of them; today's
// schema check writes the schema record that v1 binaries never wrote.
func TestFixtureV1InEtcd(t *testing.T) {
	kv := newKV(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	recs := readFixtureV1(t)
	var ops []store.Op
	for _, r := range recs {
		ops = append(ops, store.Put(r.Key, r.Value))
	}
	if _, err := kv.Txn(ctx, nil, ops); err != nil {
		t.Fatal(err)
	}
	rep, err := ipam.Check(ctx, kv)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 0 {
		t.Fatalf("ipam check of the v1 fixture: %+v", rep.Problems)
	}
	pools, err := ipam.Pools(ctx, kv)
	if err != nil || len(pools) != 4 {
		t.Fatalf("pools %+v: %v", pools, err)
	}
	im := &ipam.IPAM{KV: kv, Host: "host1"}
	_, out, err := im.Assign(ctx, ipam.Request{Network: "tabby-net", ContainerID: "after-upgrade", IPv4: true, Pools4: []string{"10.0.0.0/16"}})
	if err != nil {
		t.Fatal(err)
	}
	aff, _, err := kv.List(ctx, model.AffinityHostPrefix("host1"), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(aff) != 2 { // the v1 blocks of host1 in both pools, no new one
		t.Fatalf("host1 claimed a new block for %s instead of using its v1 block: %d affinities", out[0].IP, len(aff))
	}
	if err := im.Release(ctx, "tabby-net", "ctr-c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, model.HandleKey("tabby-net", "ctr-c1")); err == nil {
		t.Fatalf("v1 handle ctr-c1 still there after its release")
	}
	if _, err := model.EnsureSchema(ctx, kv); err != nil {
		t.Fatal(err)
	}
	s, ok, err := model.ReadSchema(ctx, kv)
	if err != nil || !ok || s != model.CurrentSchema() {
		t.Fatalf("schema after the first write on a v1 store: %+v %v %v", s, ok, err)
	}
}
