// Package pod keeps, for every pod that is not on the host network, the
// model.K8sPod record the CNI plugin reads at ADD (labels, named ports,
// extra profiles), and keeps the labels and named ports of the pod's
// endpoints and their member records in step with the pod afterwards.
package pod

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/tabby-net/tabby/pkg/model"
)

// AnnotationProfiles lists profiles, comma separated, that the CNI plugin
// gives the pod's endpoints before its namespace's profile.
const AnnotationProfiles = "tabby.io/profiles"

// Ports are the named ports of every container of the pod, in the pod's
// order, protocols lower-case.
func Ports(pod *corev1.Pod) []model.NamedPort {
	var out []model.NamedPort
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, p := range c.Ports {
				if p.Name == "" {
					continue
				}
				proto := strings.ToLower(string(p.Protocol))
				if proto == "" {
					proto = "tcp"
				}
				out = append(out, model.NamedPort{Name: p.Name, Protocol: proto, Port: int(p.ContainerPort)})
			}
		}
	}
	return out
}

// Profiles reads the pod's AnnotationProfiles; a name that is not valid
// makes the whole annotation unreadable (error, no profiles).
func Profiles(pod *corev1.Pod) ([]string, error) {
	v, ok := pod.Annotations[AnnotationProfiles]
	if !ok {
		return nil, nil
	}
	var out []string
	for _, p := range strings.Split(v, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if err := model.ValidName(p); err != nil {
			return nil, fmt.Errorf("pod %s/%s: annotation %s=%q: %v; the annotation is ignored", pod.Namespace, pod.Name, AnnotationProfiles, v, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// Record is what the CNI plugin needs of the pod. An unreadable profiles
// annotation is ignored, and said in the error.
func Record(pod *corev1.Pod) (model.K8sPod, error) {
	profiles, err := Profiles(pod)
	return model.K8sPod{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID),
		Labels: pod.Labels, Ports: Ports(pod), Profiles: profiles}, err
}

// WorkloadPrefix holds the endpoints of pod ns/name on host.
func WorkloadPrefix(host, ns, name string) string {
	return model.HostWorkloadPrefix(host) + model.OrchestratorK8s + "/" + ns + "." + name + "/"
}
