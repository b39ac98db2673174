package model

import "testing"

func TestDisplayName(t *testing.T) {
	for _, c := range []struct{ orch, wl, want string }{
		{OrchestratorK8s, "kube-system.coredns-7c6d.x", "kube-system/coredns-7c6d.x"},
		{OrchestratorK8s, "nodots", "nodots"},
		{OrchestratorCNI, "a.b", "a.b"},
	} {
		e := Endpoint{Orchestrator: c.orch, Workload: c.wl}
		if got := e.DisplayName(); got != c.want {
			t.Errorf("%s %q: %q, want %q", c.orch, c.wl, got, c.want)
		}
	}
}
