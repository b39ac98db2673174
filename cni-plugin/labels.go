package main

import (
	"context"
	"errors"
	"time"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/selector"
	"github.com/tabby-net/tabby/pkg/store"
)

// podRecordWait bounds the wait for tabby-kube-controllers' record of a
// pod. The controller writes it when the pod is created, well before the
// kubelet has scheduled and started its sandbox; a wait this long means the
// controller is down or far behind, and the kubelet's retry is the remedy.
const podRecordWait = 4 * time.Second

// identify gives the endpoint its namespace, labels, named ports and the
// profiles a pod's annotation adds. A Kubernetes pod's come from the
// record tabby-kube-controllers keeps of it, so that the policies that
// select the pod are known before its interface exists; any other
// workload's labels come from its arguments.
func (c *call) identify(ctx context.Context, ep *model.Endpoint) error {
	if c.wargs.Orchestrator != model.OrchestratorK8s {
		ep.Labels = c.wargs.Labels
		return nil
	}
	ep.Namespace = c.wargs.K8sNamespace
	pod, err := c.podRecord(ctx)
	if err != nil || pod == nil {
		return err
	}
	ep.Labels, ep.Ports = pod.Labels, pod.Ports
	// The pod's own profiles go before its namespace's: the first profile
	// whose rule matches decides, and the pod's choice is the narrower one
	// (a quarantine profile that denies must not come after the
	// namespace's allow-all).
	nsProfile := model.K8sNamespaceProfile(ep.Namespace)
	var out []string
	for _, p := range ep.Profiles {
		if p == nsProfile {
			out = append(out, pod.Profiles...)
		}
		out = append(out, p)
	}
	ep.Profiles = out
	return nil
}

// podRecord reads the controller's record of this pod, waiting for it (and
// for one of this pod's UID, after a pod was recreated under the same
// name) when the network requires it. nil: no record, and none required.
func (c *call) podRecord(ctx context.Context) (*model.K8sPod, error) {
	key := model.K8sPodKey(c.wargs.K8sNamespace, c.wargs.K8sPod)
	deadline := time.Now().Add(podRecordWait)
	why := "is not in etcd"
	for delay := 20 * time.Millisecond; ; delay = min(2*delay, 250*time.Millisecond) {
		var pod model.K8sPod
		_, err := store.GetJSON(ctx, c.KV, key, &pod)
		found := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		switch {
		case found && (c.wargs.K8sPodUID == "" || pod.UID == c.wargs.K8sPodUID):
			for _, p := range pod.Profiles {
				if model.ValidName(p) != nil {
					return nil, cnierr.New(cnierr.BadArgs, "pod %s/%s: profile %q of its record is not a valid name", pod.Namespace, pod.Name, p)
				}
			}
			// The API server validates labels as selector.ValidLabels does;
			// the record passed through etcd, so check again where the
			// labels enter the endpoint.
			if err := selector.ValidLabels(pod.Labels); err != nil {
				return nil, cnierr.New(cnierr.BadArgs, "pod %s/%s: its record's labels: %v", pod.Namespace, pod.Name, err)
			}
			return &pod, nil
		case found:
			why = "is of another pod of that name (UID " + pod.UID + ", this one is " + c.wargs.K8sPodUID + ")"
		case !c.Conf.K8sPodRequired:
			return nil, nil
		}
		if time.Now().Add(delay).After(deadline) {
			return nil, cnierr.New(cnierr.TryAgain, "the record of pod %s/%s %s after %s: its labels and so its policies are not known; is tabby-kube-controllers running?",
				c.wargs.K8sNamespace, c.wargs.K8sPod, why, podRecordWait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
}
