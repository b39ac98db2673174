// Package namespace keeps, for every Kubernetes Namespace, the profile
// k8s_ns.<namespace> that the CNI plugin gives each of the namespace's pods
// (pkg/netconf), and deletes those of namespaces that are gone.
package namespace

import (
	"fmt"
	"reflect"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/tabby-net/tabby/pkg/model"
)

// Annotations on a Namespace that choose its pods' isolation.
const (
	// AnnotationIsolation with the value IsolationNamespace isolates the
	// namespace's pods: they accept traffic only from each other (the seed's
	// profile semantics, model.DefaultProfile). Absent: Kubernetes' default,
	// pods are not isolated.
	AnnotationIsolation = "tabby.io/isolation"
	IsolationNamespace  = "namespace"
	// AnnotationAllowFrom lists other namespaces, comma separated, whose pods
	// an isolated namespace also accepts.
	AnnotationAllowFrom = "tabby.io/allow-from-namespaces"
)

// ProfilePrefix starts every profile this controller owns; profiles named
// otherwise belong to tabby's users and are never touched.
const ProfilePrefix = model.K8sNamespaceProfilePrefix

// ProfileName is the profile of the pods of namespace ns.
func ProfileName(ns string) string { return model.K8sNamespaceProfile(ns) }

// AnnotationError says why a namespace's annotations could not be read. The
// namespace is then isolated, not opened: a user who wrote an annotation
// wanted fewer peers, not more.
type AnnotationError struct {
	Namespace  string
	Annotation string
	Value      string
	Why        string
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("namespace %s: annotation %s=%q: %s; the namespace is isolated (its pods accept only each other) until the annotation is fixed",
		e.Namespace, e.Annotation, e.Value, e.Why)
}

// allowAll is Kubernetes' default for pods no policy selects.
func allowAll(name string) model.Profile {
	return model.Profile{Name: name,
		Inbound:  []model.Rule{{Action: model.ActionAllow}},
		Outbound: []model.Rule{{Action: model.ActionAllow}}}
}

// Render is the profile ns's pods get. With an *AnnotationError it also
// returns the fail-closed profile (isolated, same namespace only), which is
// what should be written.
func Render(ns *corev1.Namespace) (model.Profile, error) {
	name := ProfileName(ns.Name)
	iso, hasIso := ns.Annotations[AnnotationIsolation]
	from, hasFrom := ns.Annotations[AnnotationAllowFrom]
	closed := model.DefaultProfile(name)
	fail := func(ann, val, why string) (model.Profile, error) {
		return closed, &AnnotationError{Namespace: ns.Name, Annotation: ann, Value: val, Why: why}
	}
	if !hasIso {
		if hasFrom {
			// Without isolation there is nothing to add to; the user asked
			// for a restriction, so the safe reading is the isolated one.
			return fail(AnnotationAllowFrom, from, fmt.Sprintf("it needs %s: %s", AnnotationIsolation, IsolationNamespace))
		}
		return allowAll(name), nil
	}
	if strings.TrimSpace(iso) != IsolationNamespace {
		return fail(AnnotationIsolation, iso, fmt.Sprintf("the only value is %q (or no annotation: not isolated)", IsolationNamespace))
	}
	p := closed
	seen := map[string]bool{ns.Name: true} // the first rule already admits the namespace itself
	for _, o := range strings.Split(from, ",") {
		o = strings.TrimSpace(o)
		if o == "" || seen[o] {
			continue
		}
		// A name no namespace can have is a typo, not a namespace to wait for.
		if errs := validation.IsDNS1123Label(o); len(errs) > 0 {
			return fail(AnnotationAllowFrom, from, fmt.Sprintf("%q is not a namespace name: %s", o, strings.Join(errs, "; ")))
		}
		seen[o] = true
		p.Inbound = append(p.Inbound, model.Rule{Action: model.ActionAllow, SrcTag: ProfileName(o)})
	}
	return p, nil
}

// Equal reports whether two profiles have the same name and rules; a
// missing and an empty rule list are the same.
func Equal(a, b model.Profile) bool {
	norm := func(p model.Profile) model.Profile {
		if len(p.Inbound) == 0 {
			p.Inbound = nil
		}
		if len(p.Outbound) == 0 {
			p.Outbound = nil
		}
		return p
	}
	return reflect.DeepEqual(norm(a), norm(b))
}
