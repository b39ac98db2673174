package ipam

import (
	"sort"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

func runningEP(name, veth, ip string) *model.Endpoint {
	return &model.Endpoint{Host: "h1", Orchestrator: "cni", Workload: name, Name: "eth0", ContainerID: name,
		Network: "net", HostInterface: veth, IPv4Nets: []string{ip + "/32"}, Handle: "net." + name}
}

func runningHandle(name, ip string, created time.Time) *model.Handle {
	return &model.Handle{ID: "net." + name, Network: "net", ContainerID: name, Host: "h1", Workload: name,
		Plugin: "tabby", IPs: []string{ip}, Created: created.Unix()}
}

// Every kind of difference between what runs and what etcd says, once each;
// what agrees, what is younger than the grace and what runs without a note
// (added before notes existed) are not reported.
func TestHostProblems(t *testing.T) {
	old := time.Now().Add(-time.Hour)
	veths := map[string]bool{"tbyok": true, "tbynew": true, "tbytaken": true, "tbylegacy": true}
	present := func(n string) bool { return veths[n] }
	v := &hostView{
		handles: map[string]*model.Handle{
			"net.ok":     runningHandle("ok", "10.0.0.1", old),
			"net.gone":   runningHandle("gone", "10.0.0.2", old),
			"net.bare":   runningHandle("bare", "10.0.0.3", old),
			"net.young":  runningHandle("young", "10.0.0.4", time.Now()),
			"net.legacy": runningHandle("legacy", "10.0.0.6", old),
		},
		endpoints: map[string]*model.Endpoint{},
		owner: map[string]string{"10.0.0.1": "net.ok", "10.0.0.2": "net.gone", "10.0.0.3": "net.bare",
			"10.0.0.4": "net.young", "10.0.0.5": "net.other", "10.0.0.6": "net.legacy"},
	}
	for _, ep := range []*model.Endpoint{runningEP("ok", "tbyok", "10.0.0.1"), runningEP("gone", "tbygone", "10.0.0.2"),
		runningEP("young", "tbyyoung", "10.0.0.4"), runningEP("legacy", "tbylegacy", "10.0.0.6")} {
		v.endpoints[ep.Key()] = ep
	}
	running := []Running{
		{Handle: *runningHandle("ok", "10.0.0.1", old), Endpoint: runningEP("ok", "tbyok", "10.0.0.1")},
		{Handle: *runningHandle("new", "10.0.0.9", old), Endpoint: runningEP("new", "tbynew", "10.0.0.9")},
		{Handle: *runningHandle("taken", "10.0.0.5", old), Endpoint: runningEP("taken", "tbytaken", "10.0.0.5")},
	}
	var got []string
	for _, p := range v.problems("h1", running, present, time.Now().Add(-DefaultGrace)) {
		got = append(got, p.Kind+" "+p.Handle)
	}
	sort.Strings(got)
	want := []string{
		EndpointNotRunning + " net.gone",
		HandleNotRunning + " net.bare",
		RunningAddressTaken + " net.taken",
		RunningNoAllocation + " net.new",
		RunningNoEndpoint + " net.new",
		RunningNoEndpoint + " net.taken",
	}
	sort.Strings(want)
	if len(got) != len(want) {
		t.Fatalf("problems:\n got %q\nwant %q", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("problems:\n got %q\nwant %q", got, want)
		}
	}
}

// The notes an ADD leaves are read back as running attachments, except
// those whose veth is gone.
func TestRunningAttachmentsFromNotes(t *testing.T) {
	dir := t.TempDir()
	a := &IPAM{Host: "h1", LockDir: dir}
	for _, name := range []string{"up", "down"} {
		h := runningHandle(name, "10.0.0.1", time.Now())
		ep := runningEP(name, "tby"+name, "10.0.0.1")
		hkey := model.HandleKey("net", name)
		a.saveNote(hkey, []store.Op{store.Put(hkey, store.MustJSON(h)), store.Put(ep.Key(), store.MustJSON(ep))}, 7)
	}
	rs, err := RunningAttachments(dir, func(n string) bool { return n == "tbyup" })
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].Handle.ID != "net.up" || rs[0].Endpoint == nil || rs[0].Endpoint.HostInterface != "tbyup" {
		t.Fatalf("running: %+v", rs)
	}
}

// An etcd whose revision is below what the host's ADDs committed at was
// restored without a revision bump: reported, before anything else.
func TestHostProblemsRevisionWentBack(t *testing.T) {
	v := &hostView{rev: 100, handles: map[string]*model.Handle{}, endpoints: map[string]*model.Endpoint{}, owner: map[string]string{"10.0.0.1": "net.a"}}
	running := []Running{{Handle: *runningHandle("a", "10.0.0.1", time.Now()), Rev: 150}}
	ps := v.problems("h1", running, func(string) bool { return true }, time.Now())
	if len(ps) != 1 || ps[0].Kind != RevisionWentBack {
		t.Fatalf("problems: %+v", ps)
	}
	running[0].Rev = 90
	if ps := v.problems("h1", running, func(string) bool { return true }, time.Now()); len(ps) != 0 {
		t.Fatalf("problems with the revision ahead: %+v", ps)
	}
}
