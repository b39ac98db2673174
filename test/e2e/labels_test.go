package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/test/lab"
)

// A Kubernetes pod's endpoint takes its namespace, labels, named ports and
// annotated profiles from the record tabby-kube-controllers keeps of the
// pod; with k8s_pod_record_required an ADD without that record (or with
// one of another pod of the same name) fails with 11 and leaves nothing.
// Other workloads are labelled by TABBY_LABELS. Every endpoint has a
// member record in its namespace's index, removed with it.
func TestCNILabelsFromPodRecord(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	conf := e.conf(h, "", `,"k8s_pod_record_required":true`, "")
	_, ns := e.l.AddContainer(h, "p")
	k8s := "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_UID=uid-2;K8S_POD_INFRA_CONTAINER_ID=ctr-p"

	start := time.Now()
	o := e.plugin(h, "ADD", "ctr-p", ns, "eth0", k8s, conf)
	if o.ErrCode != 11 || !strings.Contains(o.ErrMsg, "tabby-kube-controllers") {
		t.Fatalf("ADD without the pod's record: exit %d %s", o.ExitCode, o.Stdout)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("ADD without the record took %s", d)
	}
	e.assertClean(h)

	ctx := context.Background()
	put := func(p model.K8sPod) {
		if err := store.PutJSON(ctx, e.kv, model.K8sPodKey(p.Namespace, p.Name), p); err != nil {
			t.Fatal(err)
		}
	}
	pod := model.K8sPod{Namespace: "x", Name: "a", UID: "uid-1", Labels: map[string]string{"pod": "a"}}
	put(pod)
	if o := e.plugin(h, "ADD", "ctr-p", ns, "eth0", k8s, conf); o.ErrCode != 11 || !strings.Contains(o.ErrMsg, "another pod of that name") {
		t.Fatalf("ADD with a record of the pod's predecessor: exit %d %s", o.ExitCode, o.Stdout)
	}
	e.assertClean(h)

	e.MustCtl(h, "profile", "add", "extra")
	pod.UID = "uid-2"
	pod.Ports = []model.NamedPort{{Name: "serve-80-tcp", Protocol: "tcp", Port: 80}}
	pod.Profiles = []string{"extra"}
	put(pod)
	addrOf(t, e.plugin(h, "ADD", "ctr-p", ns, "eth0", k8s, conf))
	ep := e.endpoint(h, "k8s", "x.a")
	if ep.Namespace != "x" || ep.Labels["pod"] != "a" || len(ep.Ports) != 1 || ep.Ports[0].Port != 80 ||
		strings.Join(ep.Profiles, ",") != "extra,k8s_ns.x" {
		t.Fatalf("endpoint %+v", ep)
	}
	var m model.Member
	if _, err := store.GetJSON(ctx, e.kv, model.MemberKeyOf(ep), &m); err != nil || m.Labels["pod"] != "a" || m.Endpoint != ep.Key() || len(m.Nets) != 1 {
		t.Fatalf("member record %+v: %v", m, err)
	}

	// Any other workload: labels from its arguments, outside any namespace.
	_, ns2 := e.l.AddContainer(h, "q")
	if o := e.plugin(h, "ADD", "ctr-q", ns2, "eth0", "TABBY_WORKLOAD=q;TABBY_LABELS=app=web,tier=front", conf); o.ExitCode != 0 {
		t.Fatalf("ADD with TABBY_LABELS: %s", o.Stdout)
	}
	q := e.endpoint(h, "cni", "q")
	if q.Namespace != "" || q.Labels["app"] != "web" || q.Labels["tier"] != "front" {
		t.Fatalf("endpoint %+v", q)
	}
	if k := e.keys(model.MemberNamespacePrefix("")); len(k) != 1 {
		t.Fatalf("members outside namespaces: %v", k)
	}
	if o := e.plugin(h, "ADD", "ctr-r", ns2, "eth1", "TABBY_LABELS=bad key=x", conf); o.ErrCode != 7 || !strings.Contains(o.ErrMsg, "label") {
		t.Fatalf("ADD with a bad label: exit %d %s", o.ExitCode, o.Stdout)
	}

	for _, c := range []struct{ cid, ns, args string }{{"ctr-p", ns, k8s}, {"ctr-q", ns2, "TABBY_WORKLOAD=q"}} {
		if o := e.plugin(h, "DEL", c.cid, c.ns, "eth0", c.args, conf); o.ExitCode != 0 {
			t.Fatalf("DEL %s: %s", c.cid, o.Stdout)
		}
	}
	e.assertClean(h)
}
