// Package conf_test checks the install and deployment files in conf/ against
// each other and against the code they configure: the Kubernetes manifest
// (decoded strictly with the Kubernetes API types), the systemd unit and its
// environment file, install-cni.sh (run for real in a temp dir) and the
// Dockerfile. Names are read from the sources (node/main.go, the Makefile,
// the script), not copied here, so the files cannot drift apart unnoticed.
package conf_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/tabby-net/tabby/pkg/cliflags"
	"github.com/tabby-net/tabby/pkg/netconf"
	"github.com/tabby-net/tabby/pkg/nodestatus"
)

const (
	manifestPath   = "k8s/tabby.yaml"
	unitPath       = "systemd/tabby-node.service"
	envFilePath    = "systemd/tabby-node.env"
	scriptPath     = "install-cni.sh"
	dockerfilePath = "Dockerfile"
	nodeMainPath   = "../node/main.go"
	makefilePath   = "../Makefile"
)

var binaries = []string{"tabby", "tabby-ipam", "tabby-node", "tabbyctl"}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ---------------------------------------------------------------------------
// What the sources say.

// nodeEnvNames is every environment variable tabby-node reads: its own,
// from node/main.go (env("NAME", ...) and os.Getenv("NAME")), and those of
// the flags every tabby daemon shares (pkg/cliflags).
func nodeEnvNames(t *testing.T) []string {
	t.Helper()
	re := regexp.MustCompile(`\b(?:env|os\.Getenv)\("([A-Z][A-Z0-9_]*)"`)
	set := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(read(t, nodeMainPath), -1) {
		set[m[1]] = true
	}
	for _, f := range append(cliflags.EtcdFlags, cliflags.FlagLogLevel) {
		set[f.Env] = true
	}
	for _, must := range []string{"TABBY_NODENAME", "ETCD_ENDPOINTS", "TABBY_STATE_DIR"} {
		if !set[must] {
			t.Fatalf("%s: found %v, not %s: has the way tabby-node reads its environment changed? update nodeEnvNames", nodeMainPath, keys(set), must)
		}
	}
	return keys(set)
}

// scriptEnv is every variable install-cni.sh takes from the environment
// (${NAME:-default} or ${NAME-default}) with its default.
func scriptEnv(t *testing.T) map[string]string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^([A-Z][A-Z0-9_]*)=\$\{([A-Z][A-Z0-9_]*):?-([^}]*)\}$`)
	out := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(read(t, scriptPath), -1) {
		if m[1] != m[2] {
			t.Fatalf("%s: %s=${%s...}: an environment default must keep its name", scriptPath, m[1], m[2])
		}
		out[m[1]] = m[3]
	}
	if len(out) < 5 {
		t.Fatalf("%s: found only %v environment variables", scriptPath, out)
	}
	return out
}

// scriptPlaceholders is every __NAME__ that install-cni.sh substitutes.
func scriptPlaceholders(t *testing.T) []string {
	t.Helper()
	re := regexp.MustCompile(`s\|(__[A-Z0-9_]+__)\|`)
	set := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(read(t, scriptPath), -1) {
		set[m[1]] = true
	}
	return keys(set)
}

// makeTarget returns the recipe lines of a Makefile target.
func makeTarget(t *testing.T, target string) []string {
	t.Helper()
	var recipe []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(read(t, makefilePath)))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, target+":"):
			in = true
		case in && strings.HasPrefix(line, "\t"):
			recipe = append(recipe, strings.TrimSpace(line))
		case in && strings.TrimSpace(line) != "" && !strings.HasPrefix(line, "#"):
			in = false
		}
	}
	return recipe
}

// installedPath is where the Makefile's install target puts a binary.
func installedPath(t *testing.T, bin string) string {
	t.Helper()
	for _, l := range makeTarget(t, "install") {
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != "install" || !slices.Contains(f, "$(BIN)/"+bin) {
			continue
		}
		return filepath.Join(f[len(f)-1], bin)
	}
	t.Fatalf("%s: the install target does not install $(BIN)/%s", makefilePath, bin)
	return ""
}

// buildPackages maps each binary to its Go package, from `make build`.
func buildPackages(t *testing.T) map[string]string {
	t.Helper()
	re := regexp.MustCompile(`-o \$\(BIN\)/(\S+) (\./\S+)`)
	out := map[string]string{}
	for _, l := range makeTarget(t, "build") {
		if m := re.FindStringSubmatch(l); m != nil {
			out[m[1]] = m[2]
		}
	}
	for _, b := range binaries {
		if out[b] == "" {
			t.Fatalf("%s: build target does not build %s (found %v)", makefilePath, b, out)
		}
	}
	return out
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---------------------------------------------------------------------------
// The Kubernetes manifest.

type manifest struct {
	sa  *corev1.ServiceAccount
	sec *corev1.Secret
	cm  *corev1.ConfigMap
	ds  *appsv1.DaemonSet
	// tabby-kube-controllers: its account, RBAC and Deployment.
	ctrlSA *corev1.ServiceAccount
	role   *rbacv1.ClusterRole
	bind   *rbacv1.ClusterRoleBinding
	deploy *appsv1.Deployment
}

// splitDocs splits a multi-document YAML stream, dropping documents that
// hold only comments.
func splitDocs(s string) []string {
	var out []string
	for _, d := range regexp.MustCompile(`(?m)^---[ \t]*$`).Split(s, -1) {
		empty := true
		for _, l := range strings.Split(d, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				empty = false
				break
			}
		}
		if !empty {
			out = append(out, d)
		}
	}
	return out
}

// decodeManifest decodes every document strictly into its API type: an
// unknown (misspelt) or duplicate field is an error. sigs.k8s.io/yaml's
// UnmarshalStrict alone matches field names case-insensitively (encoding/json),
// so the JSON is also decoded with sigs.k8s.io/json's UnmarshalStrict, which
// is case-sensitive, as the API server decodes.
func decodeManifest(src string) (*manifest, error) {
	m := &manifest{}
	for i, doc := range splitDocs(src) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		var obj any
		switch gk := tm.APIVersion + " " + tm.Kind; gk {
		case "v1 ServiceAccount":
			sa := &corev1.ServiceAccount{}
			if m.sa == nil {
				m.sa = sa
			} else {
				m.ctrlSA = sa
			}
			obj = sa
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			m.role = &rbacv1.ClusterRole{}
			obj = m.role
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			m.bind = &rbacv1.ClusterRoleBinding{}
			obj = m.bind
		case "apps/v1 Deployment":
			m.deploy = &appsv1.Deployment{}
			obj = m.deploy
		case "v1 Secret":
			m.sec = &corev1.Secret{}
			obj = m.sec
		case "v1 ConfigMap":
			m.cm = &corev1.ConfigMap{}
			obj = m.cm
		case "apps/v1 DaemonSet":
			m.ds = &appsv1.DaemonSet{}
			obj = m.ds
		default:
			return nil, fmt.Errorf("document %d: unexpected %q", i+1, gk)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
		j, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
		strict, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
		if err == nil && len(strict) > 0 {
			err = errors.Join(strict...)
		}
		if err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
	}
	if m.sa == nil || m.sec == nil || m.cm == nil || m.ds == nil {
		return nil, fmt.Errorf("want a ServiceAccount, a Secret, a ConfigMap and a DaemonSet")
	}
	if m.ctrlSA == nil || m.role == nil || m.bind == nil || m.deploy == nil {
		return nil, fmt.Errorf("want tabby-kube-controllers' ServiceAccount, ClusterRole, ClusterRoleBinding and Deployment")
	}
	return m, nil
}

func loadManifest(t *testing.T) *manifest {
	t.Helper()
	m, err := decodeManifest(read(t, manifestPath))
	if err != nil {
		t.Fatalf("%s: %v", manifestPath, err)
	}
	return m
}

func TestManifestStrict(t *testing.T) {
	m := loadManifest(t)
	for _, om := range []metav1.ObjectMeta{m.sa.ObjectMeta, m.sec.ObjectMeta, m.cm.ObjectMeta, m.ds.ObjectMeta} {
		if om.Namespace != "kube-system" {
			t.Errorf("%s: namespace %q, want kube-system", om.Name, om.Namespace)
		}
	}
	// The strict decoding must catch what it is here for.
	src := read(t, manifestPath)
	for _, bad := range []struct{ from, to string }{
		{"hostNetwork: true", "hostNetwrok: true"},
		{"mountPath: /run/xtables.lock", "mountpath: /run/xtables.lock"},
		{"priorityClassName:", "priorityClass:"},
		{"automountServiceAccountToken: false\n---", "automountServiceAccountToken: false\nsecrets2: []\n---"},
		{"      hostNetwork: true\n", "      hostNetwork: true\n      hostNetwork: true\n"},
	} {
		if !strings.Contains(src, bad.from) {
			t.Fatalf("self-check: %q not in the manifest", bad.from)
		}
		if _, err := decodeManifest(strings.Replace(src, bad.from, bad.to, 1)); err == nil {
			t.Errorf("strict decoding accepted %q", bad.to)
		}
	}
}

func container(t *testing.T, cs []corev1.Container, name string) *corev1.Container {
	t.Helper()
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func envVar(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func TestDaemonSet(t *testing.T) {
	m := loadManifest(t)
	ds := m.ds
	spec := &ds.Spec.Template.Spec

	if ds.Name != "tabby-node" {
		t.Errorf("DaemonSet name %q", ds.Name)
	}
	if !spec.HostNetwork {
		t.Error("hostNetwork must be true")
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if spec.ServiceAccountName != m.sa.Name {
		t.Errorf("serviceAccountName %q, the manifest declares %q", spec.ServiceAccountName, m.sa.Name)
	}
	tolerateAll := false
	for _, tol := range spec.Tolerations {
		if tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == "" {
			tolerateAll = true
		}
	}
	if !tolerateAll {
		t.Errorf("tolerations %+v: want one {operator: Exists} that tolerates every taint", spec.Tolerations)
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || us.RollingUpdate.MaxUnavailable.String() != "1" {
		t.Errorf("updateStrategy %+v: want RollingUpdate with maxUnavailable 1", us)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not match the pod labels %v", sel, ds.Spec.Template.Labels)
	}

	// Volumes: every mount names a declared volume, every volume is mounted.
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		if _, dup := vols[v.Name]; dup {
			t.Errorf("volume %q declared twice", v.Name)
		}
		vols[v.Name] = v
	}
	used := map[string]bool{}
	all := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	for _, c := range all {
		for _, vm := range c.VolumeMounts {
			if _, ok := vols[vm.Name]; !ok {
				t.Errorf("container %s mounts %q, which is not among the volumes %v", c.Name, vm.Name, keys(vols))
			}
			used[vm.Name] = true
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("container %s: set cpu and memory requests", c.Name)
		}
	}
	for name := range vols {
		if !used[name] {
			t.Errorf("volume %q is mounted by no container", name)
		}
	}
	// mountOf returns the container's mount of the hostPath volume for path.
	mountOf := func(c *corev1.Container, hostPath string) *corev1.VolumeMount {
		t.Helper()
		for i, vm := range c.VolumeMounts {
			if hp := vols[vm.Name].HostPath; hp != nil && hp.Path == hostPath {
				return &c.VolumeMounts[i]
			}
		}
		t.Errorf("container %s does not mount the host's %s", c.Name, hostPath)
		return &corev1.VolumeMount{}
	}
	hostPathType := func(path string) corev1.HostPathType {
		for _, v := range vols {
			if v.HostPath != nil && v.HostPath.Path == path && v.HostPath.Type != nil {
				return *v.HostPath.Type
			}
		}
		return ""
	}
	for path, want := range map[string]corev1.HostPathType{
		"/var/run/tabby":    corev1.HostPathDirectoryOrCreate,
		"/run/xtables.lock": corev1.HostPathFileOrCreate,
		"/opt/cni/bin":      corev1.HostPathDirectoryOrCreate,
		"/etc/cni/net.d":    corev1.HostPathDirectoryOrCreate,
	} {
		if got := hostPathType(path); got != want {
			t.Errorf("hostPath %s: type %q, want %q", path, got, want)
		}
	}

	// The daemon.
	if len(spec.Containers) != 1 {
		t.Errorf("want one container, have %d", len(spec.Containers))
	}
	node := container(t, spec.Containers, "tabby-node")
	if sc := node.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("tabby-node must run privileged")
	}
	var names []string
	for _, e := range node.Env {
		names = append(names, e.Name)
	}
	sort.Strings(names)
	want := nodeEnvNames(t)
	if !slices.Equal(names, want) {
		t.Errorf("tabby-node env %v; node/main.go reads %v: set each one (and only those)", names, want)
	}
	if e := envVar(node, "TABBY_NODENAME"); e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil ||
		e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("TABBY_NODENAME must come from fieldRef spec.nodeName: %+v", e)
	}
	if e := envVar(node, "TABBY_IP"); e == nil || e.Value != "autodetect" {
		t.Errorf("TABBY_IP: %+v, want autodetect", e)
	}
	if e := envVar(node, "ETCD_ENDPOINTS"); e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
		e.ValueFrom.SecretKeyRef.Name != m.sec.Name {
		t.Errorf("ETCD_ENDPOINTS must come from the Secret %s: %+v", m.sec.Name, e)
	}
	stateDir := envVar(node, "TABBY_STATE_DIR")
	if stateDir == nil || mountOf(node, "/var/run/tabby").MountPath != stateDir.Value {
		t.Errorf("TABBY_STATE_DIR %+v must be where the host's /var/run/tabby is mounted", stateDir)
	}
	if vm := mountOf(node, "/lib/modules"); !vm.ReadOnly {
		t.Error("/lib/modules must be mounted read-only")
	}
	if vm := mountOf(node, "/run/xtables.lock"); vm.MountPath != "/run/xtables.lock" {
		t.Errorf("the iptables lock is mounted at %q, iptables looks at /run/xtables.lock", vm.MountPath)
	}

	// Probes ask the status socket with tabbyctl; readiness greps its JSON.
	for name, p := range map[string]*corev1.Probe{"liveness": node.LivenessProbe, "readiness": node.ReadinessProbe, "startup": node.StartupProbe} {
		if p == nil || p.Exec == nil || !strings.Contains(strings.Join(p.Exec.Command, " "), "tabbyctl node status") {
			t.Errorf("%s probe %+v: want exec `tabbyctl node status`", name, p)
		}
	}
	if p := node.ReadinessProbe; p != nil && p.Exec != nil {
		js, _ := json.MarshalIndent(nodestatus.Status{Ready: true}, "", "  ") // as tabbyctl -o json prints it
		cmd := strings.Join(p.Exec.Command, " ")
		re := regexp.MustCompile(`grep -q '([^']+)'`)
		mm := re.FindStringSubmatch(cmd)
		if mm == nil || !bytes.Contains(js, []byte(mm[1])) {
			t.Errorf("readiness probe %q must grep a string that `tabbyctl node status -o json` prints when ready:\n%s", cmd, js)
		}
	}

	// The init container: same image, runs the script where the Dockerfile
	// puts it, with directories that are mounted.
	if len(spec.InitContainers) != 1 {
		t.Errorf("want one init container, have %d", len(spec.InitContainers))
	}
	ic := container(t, spec.InitContainers, "install-cni")
	if ic.Image != node.Image {
		t.Errorf("install-cni image %q differs from tabby-node's %q", ic.Image, node.Image)
	}
	df := parseDockerfile(t)
	if script := df.copyDest(t, "conf/install-cni.sh"); !slices.Equal(ic.Command, []string{script}) {
		t.Errorf("install-cni command %v, the image has the script at %s", ic.Command, script)
	}
	senv := scriptEnv(t)
	for _, e := range ic.Env {
		if _, ok := senv[e.Name]; !ok {
			t.Errorf("install-cni env %s: %s does not read it (it reads %v)", e.Name, scriptPath, keys(senv))
		}
	}
	dirEnv := func(name string) string {
		if e := envVar(ic, name); e != nil {
			return e.Value
		}
		return senv[name]
	}
	if got := mountOf(ic, "/opt/cni/bin").MountPath; got != dirEnv("CNI_BIN_DIR") {
		t.Errorf("the host's /opt/cni/bin is mounted at %s, CNI_BIN_DIR is %s", got, dirEnv("CNI_BIN_DIR"))
	}
	if got := mountOf(ic, "/etc/cni/net.d").MountPath; got != dirEnv("CNI_NET_DIR") {
		t.Errorf("the host's /etc/cni/net.d is mounted at %s, CNI_NET_DIR is %s", got, dirEnv("CNI_NET_DIR"))
	}
	if dirEnv("HOST_CNI_NET_DIR") != "/etc/cni/net.d" {
		t.Errorf("HOST_CNI_NET_DIR %q: the TLS paths in the conflist must be the host's", dirEnv("HOST_CNI_NET_DIR"))
	}
	if got, want := dirEnv("SRC_BIN_DIR"), df.copyDest(t, "/out/tabby"); got != want {
		t.Errorf("SRC_BIN_DIR %s, the image has the plugins in %s", got, want)
	}
	if e := envVar(ic, "CNI_NETWORK_CONFIG"); e == nil || e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil ||
		e.ValueFrom.ConfigMapKeyRef.Key != "cni_network_config" {
		t.Errorf("CNI_NETWORK_CONFIG must come from the ConfigMap's cni_network_config: %+v", e)
	}

	// The etcd TLS Secret: one volume, mounted at the same place in both
	// containers (the same ETCD_*_FILE paths serve both).
	var tlsVol string
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode != 0o400 {
				t.Errorf("volume %s: defaultMode %v, want 0400 (the etcd key)", v.Name, v.Secret.DefaultMode)
			}
			if v.Secret.SecretName != m.sec.Name {
				t.Errorf("volume %s: Secret %q, the manifest declares %q", v.Name, v.Secret.SecretName, m.sec.Name)
			}
			tlsVol = v.Name
		}
	}
	var tlsPaths []string
	for _, c := range all {
		for _, vm := range c.VolumeMounts {
			if vm.Name == tlsVol {
				tlsPaths = append(tlsPaths, vm.MountPath)
				if !vm.ReadOnly {
					t.Errorf("%s: mount the etcd TLS Secret read-only", c.Name)
				}
			}
		}
	}
	if len(tlsPaths) != 2 || tlsPaths[0] != tlsPaths[1] {
		t.Errorf("etcd TLS Secret mounts %v: want the same path in install-cni and tabby-node", tlsPaths)
	}
	for _, k := range []string{"etcd-ca", "etcd-cert", "etcd-key"} {
		if len(tlsPaths) > 0 && !strings.Contains(read(t, manifestPath), tlsPaths[0]+"/"+k) {
			t.Errorf("the manifest should say where %s is mounted: %s/%s", k, tlsPaths[0], k)
		}
	}

	// Every Secret and ConfigMap key referenced exists.
	for _, c := range all {
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				continue
			}
			if r := e.ValueFrom.SecretKeyRef; r != nil {
				_, inData := m.sec.Data[r.Key]
				_, inString := m.sec.StringData[r.Key]
				if r.Name != m.sec.Name || !(inData || inString) {
					t.Errorf("%s env %s: Secret %s key %s is not declared", c.Name, e.Name, r.Name, r.Key)
				}
			}
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
				if _, ok := m.cm.Data[r.Key]; r.Name != m.cm.Name || !ok {
					t.Errorf("%s env %s: ConfigMap %s key %s is not declared", c.Name, e.Name, r.Name, r.Key)
				}
			}
		}
	}
	for _, k := range []string{"etcd_endpoints", "etcd-ca", "etcd-cert", "etcd-key"} {
		if _, ok := m.sec.StringData[k]; !ok {
			t.Errorf("Secret %s has no %s", m.sec.Name, k)
		}
	}
}

// ---------------------------------------------------------------------------
// CNI configurations: the ConfigMap's template and conf/*.conflist.

// checkConflist parses a conflist and decodes its tabby plugin strictly into
// netconf.NetConf (a key tabby does not know is an error), then runs the
// plugins' own validation on it.
func checkConflist(t *testing.T, what string, b []byte) map[string]any {
	t.Helper()
	var list struct {
		CNIVersion string            `json:"cniVersion"`
		Name       string            `json:"name"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("%s is not JSON: %v\n%s", what, err, b)
	}
	if len(list.Plugins) == 0 {
		t.Fatalf("%s: no plugins", what)
	}
	var first map[string]any
	if err := json.Unmarshal(list.Plugins[0], &first); err != nil {
		t.Fatal(err)
	}
	if first["type"] != "tabby" {
		t.Fatalf("%s: first plugin is %v, want tabby", what, first["type"])
	}
	dec := json.NewDecoder(bytes.NewReader(list.Plugins[0]))
	dec.DisallowUnknownFields()
	var nc netconf.NetConf
	if err := dec.Decode(&nc); err != nil {
		t.Errorf("%s: tabby plugin: %v", what, err)
	}
	first["cniVersion"], first["name"] = list.CNIVersion, list.Name
	conf, _ := json.Marshal(first)
	if _, err := netconf.Parse(conf); err != nil {
		t.Errorf("%s: netconf.Parse: %v", what, err)
	}
	return first
}

func TestConfigMapTemplate(t *testing.T) {
	m := loadManifest(t)
	tmpl := m.cm.Data["cni_network_config"]
	if tmpl == "" {
		t.Fatal("ConfigMap has no cni_network_config")
	}
	used := map[string]bool{}
	for _, p := range regexp.MustCompile(`__[A-Z0-9_]+__`).FindAllString(tmpl, -1) {
		used[p] = true
	}
	known := scriptPlaceholders(t)
	if !slices.Equal(keys(used), known) {
		t.Errorf("template placeholders %v, %s fills %v", keys(used), scriptPath, known)
	}
	filled := tmpl
	for _, p := range known {
		filled = strings.ReplaceAll(filled, p, "x")
	}
	first := checkConflist(t, "cni_network_config", []byte(filled))
	// The plugin and the daemon share the state dir (nodename, status socket).
	node := container(t, m.ds.Spec.Template.Spec.Containers, "tabby-node")
	if sd := envVar(node, "TABBY_STATE_DIR"); sd == nil || first["state_dir"] != sd.Value {
		t.Errorf("conflist state_dir %v differs from tabby-node's TABBY_STATE_DIR %+v", first["state_dir"], sd)
	}
	if first["nodename"] != "" {
		t.Errorf("nodename %v: leave it empty, the plugin reads <state_dir>/nodename", first["nodename"])
	}
}

func TestExampleConflists(t *testing.T) {
	files, _ := filepath.Glob("*.conflist")
	if len(files) == 0 {
		t.Fatal("no conf/*.conflist")
	}
	for _, f := range files {
		checkConflist(t, f, []byte(read(t, f)))
	}
}

// ---------------------------------------------------------------------------
// systemd.

// parseUnit reads a unit file: section -> key -> values in order.
func parseUnit(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	out := map[string]map[string][]string{}
	sec := ""
	for i, l := range strings.Split(read(t, path), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			sec = l[1 : len(l)-1]
			out[sec] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || sec == "" {
				t.Fatalf("%s:%d: %q is not KEY=VALUE in a section", path, i+1, l)
			}
			out[sec][strings.TrimSpace(k)] = append(out[sec][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return out
}

func one(t *testing.T, u map[string]map[string][]string, sec, key string) string {
	t.Helper()
	v := u[sec][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s: %v, want one value", sec, key, v)
	}
	return v[0]
}

func TestSystemdUnit(t *testing.T) {
	u := parseUnit(t, unitPath)
	if got := one(t, u, "Service", "Restart"); got != "always" {
		t.Errorf("Restart=%s, want always", got)
	}
	one(t, u, "Service", "RestartSec")
	one(t, u, "Service", "LimitNOFILE")
	if got := one(t, u, "Unit", "StartLimitIntervalSec"); got != "0" {
		t.Errorf("StartLimitIntervalSec=%s: 0 keeps systemd restarting it forever", got)
	}
	for _, k := range []string{"After", "Wants"} {
		if !slices.Contains(strings.Fields(strings.Join(u["Unit"][k], " ")), "network-online.target") {
			t.Errorf("[Unit] %s must name network-online.target", k)
		}
	}
	switch km := u["Service"]["KillMode"]; {
	case len(km) == 0, km[0] == "control-group", km[0] == "mixed":
	default:
		t.Errorf("KillMode=%s would leave iptables-restore or ipset children behind", km[0])
	}
	execStart := strings.Fields(one(t, u, "Service", "ExecStart"))
	if want := installedPath(t, "tabby-node"); execStart[0] != want {
		t.Errorf("ExecStart runs %s; make install puts tabby-node at %s", execStart[0], want)
	}
	envFile := one(t, u, "Service", "EnvironmentFile")
	if envFile != "-/etc/tabby/tabby-node.env" {
		t.Errorf("EnvironmentFile=%s, want -/etc/tabby/tabby-node.env (optional)", envFile)
	}
	if got := one(t, u, "Install", "WantedBy"); got != "multi-user.target" {
		t.Errorf("WantedBy=%s", got)
	}
	// Extra words of ExecStart may only be variables the env file documents.
	env := parseEnvFile(t)
	for _, w := range execStart[1:] {
		name := strings.TrimPrefix(w, "$")
		if _, ok := env[name]; !strings.HasPrefix(w, "$") || !ok {
			t.Errorf("ExecStart word %q: pass settings through %s", w, envFilePath)
		}
	}
	// make install-systemd, when there is one, installs these two files there.
	if r := strings.Join(makeTarget(t, "install-systemd"), "\n"); r != "" {
		for _, want := range []string{"conf/systemd/tabby-node.service /etc/systemd/system/", "conf/systemd/tabby-node.env " + filepath.Dir(strings.TrimPrefix(envFile, "-")) + "/"} {
			if !strings.Contains(r, want) {
				t.Errorf("make install-systemd does not install %q", want)
			}
		}
	}
}

// parseEnvFile returns the variables the env file sets or shows commented out.
func parseEnvFile(t *testing.T) map[string]string {
	t.Helper()
	re := regexp.MustCompile(`^#?([A-Z][A-Z0-9_]*)=(.*)$`)
	out := map[string]string{}
	for i, l := range strings.Split(read(t, envFilePath), "\n") {
		if m := re.FindStringSubmatch(l); m != nil {
			out[m[1]] = m[2]
		} else if l != "" && !strings.HasPrefix(l, "#") {
			t.Errorf("%s:%d: %q is not VAR=value", envFilePath, i+1, l)
		}
	}
	return out
}

func TestEnvFile(t *testing.T) {
	env := parseEnvFile(t)
	want := nodeEnvNames(t)
	for _, name := range want {
		if _, ok := env[name]; !ok {
			t.Errorf("%s does not document %s, which node/main.go reads", envFilePath, name)
		}
	}
	for name := range env {
		if !slices.Contains(want, name) && name != "TABBY_NODE_ARGS" {
			t.Errorf("%s sets %s, which tabby-node does not read", envFilePath, name)
		}
	}
	for _, l := range strings.Split(read(t, envFilePath), "\n") {
		if strings.HasPrefix(l, "ETCD_ENDPOINTS=") {
			return
		}
	}
	t.Errorf("%s: set ETCD_ENDPOINTS (uncommented), the one setting every host needs", envFilePath)
}

// ---------------------------------------------------------------------------
// install-cni.sh.

func TestInstallCNIScriptIsPOSIX(t *testing.T) {
	src := read(t, scriptPath)
	if !strings.HasPrefix(src, "#!/bin/sh\n") {
		t.Error("the script must start with #!/bin/sh")
	}
	if !regexp.MustCompile(`(?m)^set -eu$`).MatchString(src) {
		t.Error("the script must `set -eu`")
	}
	if fi, err := os.Stat(scriptPath); err != nil || fi.Mode()&0o111 == 0 {
		t.Errorf("%s must be executable", scriptPath)
	}
	var code []string // the script without comments
	for _, l := range strings.Split(src, "\n") {
		if s := strings.TrimSpace(l); !strings.HasPrefix(s, "#") {
			code = append(code, l)
		}
	}
	for _, b := range []struct{ re, what string }{
		{`\[\[\s`, "[[ ]]"}, {`(?m)^\s*function\s`, "function"}, {`\blocal\s`, "local"},
		{`<<<`, "here-strings"}, {`\$'`, "$'...'"}, {`\bsource\s`, "source"}, {`\[ [^]]*==`, "== in test"},
		{`\$\{[A-Za-z_]+//`, "${var//}"}, {`\becho -[neE]`, "echo options"}, {`\bpushd\b|\bpopd\b`, "pushd"},
		{`\$RANDOM|\$BASH|\$\{?PIPESTATUS`, "bash variables"}, {`&>`, "&>"},
	} {
		if loc := regexp.MustCompile(b.re).FindStringIndex(strings.Join(code, "\n")); loc != nil {
			t.Errorf("bashism (%s) in %s", b.what, scriptPath)
		}
	}
	for _, sh := range []string{"sh", "dash", "posh"} {
		if p, err := exec.LookPath(sh); err == nil {
			if out, err := exec.Command(p, "-n", scriptPath).CombinedOutput(); err != nil {
				t.Errorf("%s -n %s: %v\n%s", sh, scriptPath, err, out)
			}
		}
	}
}

type cniRun struct {
	t                               *testing.T
	root, src, extra, bin, net, tls string
	template                        string
}

func newCNIRun(t *testing.T) *cniRun {
	m := loadManifest(t)
	r := &cniRun{t: t, root: t.TempDir(), template: m.cm.Data["cni_network_config"]}
	r.src, r.extra, r.bin, r.net, r.tls = filepath.Join(r.root, "src"), filepath.Join(r.root, "extra"),
		filepath.Join(r.root, "host/opt/cni/bin"), filepath.Join(r.root, "host/etc/cni/net.d"), filepath.Join(r.root, "secret")
	for _, d := range []string{r.src, r.extra, r.tls} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"tabby", "tabby-ipam"} {
		r.write(filepath.Join(r.src, p), "#!/bin/sh\necho fake "+p+"\n", 0o755)
	}
	r.write(filepath.Join(r.extra, "portmap"), "#!/bin/sh\necho image portmap\n", 0o755)
	for _, f := range []string{"etcd-ca", "etcd-cert", "etcd-key"} {
		r.write(filepath.Join(r.tls, f), "-----BEGIN "+f+"-----\n", 0o400)
	}
	return r
}

func (r *cniRun) write(path, s string, mode os.FileMode) {
	if err := os.WriteFile(path, []byte(s), mode); err != nil {
		r.t.Fatal(err)
	}
}

// run runs the script with the given overrides of the base environment.
func (r *cniRun) run(over map[string]string) (string, error) {
	env := map[string]string{
		"PATH":               os.Getenv("PATH"),
		"SRC_BIN_DIR":        r.src,
		"EXTRA_BIN_DIR":      r.extra,
		"CNI_BIN_DIR":        r.bin,
		"CNI_NET_DIR":        r.net,
		"CNI_NETWORK_CONFIG": r.template,
		"ETCD_ENDPOINTS":     "https://10.0.0.1:2379,https://10.0.0.2:2379",
		"ETCD_CA_CERT_FILE":  filepath.Join(r.tls, "etcd-ca"),
		"ETCD_CERT_FILE":     filepath.Join(r.tls, "etcd-cert"),
		"ETCD_KEY_FILE":      filepath.Join(r.tls, "etcd-key"),
	}
	for k, v := range over {
		if v == "<unset>" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	cmd := exec.Command("sh", scriptPath)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (r *cniRun) mustRun(over map[string]string) string {
	r.t.Helper()
	out, err := r.run(over)
	if err != nil {
		r.t.Fatalf("install-cni.sh: %v\n%s", err, out)
	}
	return out
}

func (r *cniRun) conflist() map[string]any {
	r.t.Helper()
	return checkConflist(r.t, "rendered conflist", []byte(read(r.t, filepath.Join(r.net, "10-tabby.conflist"))))
}

// snapshot records every file under the host dirs: content, mode, inode,
// mtime. Names of leftover temporary files fail the test.
func (r *cniRun) snapshot() map[string]string {
	r.t.Helper()
	out := map[string]string{}
	err := filepath.Walk(filepath.Join(r.root, "host"), func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		if strings.HasPrefix(fi.Name(), ".") || strings.Contains(fi.Name(), "tmp") {
			r.t.Errorf("temporary file left behind: %s", p)
		}
		b, _ := os.ReadFile(p)
		st := fi.Sys().(*syscall.Stat_t)
		out[strings.TrimPrefix(p, r.root)] = fmt.Sprintf("%v ino=%d mtime=%d %q", fi.Mode(), st.Ino, fi.ModTime().UnixNano(), b)
		return nil
	})
	if err != nil {
		r.t.Fatal(err)
	}
	return out
}

func TestInstallCNI(t *testing.T) {
	r := newCNIRun(t)
	r.mustRun(nil)

	for _, p := range []string{"tabby", "tabby-ipam", "portmap"} {
		fi, err := os.Stat(filepath.Join(r.bin, p))
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s not installed executable: %v %v", p, fi, err)
		}
	}
	if got := read(t, filepath.Join(r.bin, "tabby")); got != read(t, filepath.Join(r.src, "tabby")) {
		t.Errorf("tabby copied wrong: %q", got)
	}
	c := r.conflist()
	if c["etcd_endpoints"] != "https://10.0.0.1:2379,https://10.0.0.2:2379" {
		t.Errorf("etcd_endpoints %v", c["etcd_endpoints"])
	}
	for key, f := range map[string]string{"etcd_ca_cert_file": "etcd-ca", "etcd_cert_file": "etcd-cert", "etcd_key_file": "etcd-key"} {
		if want := "/etc/cni/net.d/tabby-tls/" + f; c[key] != want {
			t.Errorf("%s = %v, want the host's copy %s", key, c[key], want)
		}
		if got := read(t, filepath.Join(r.net, "tabby-tls", f)); got != read(t, filepath.Join(r.tls, f)) {
			t.Errorf("%s copied wrong: %q", f, got)
		}
	}
	if fi, err := os.Stat(filepath.Join(r.net, "tabby-tls", "etcd-key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("etcd-key must be 0600: %v %v", fi, err)
	}

	// Idempotent: a second run touches nothing (same inodes, same mtimes).
	before := r.snapshot()
	r.mustRun(nil)
	after := r.snapshot()
	if !mapsEqual(before, after) {
		t.Errorf("second run changed files:\nbefore %v\nafter  %v", before, after)
	}

	// New input: the conflist is replaced (a new inode: renamed into place),
	// the unchanged plugins are not.
	r.mustRun(map[string]string{"ETCD_ENDPOINTS": "http://192.0.2.1:2379"})
	if got := r.conflist()["etcd_endpoints"]; got != "http://192.0.2.1:2379" {
		t.Errorf("etcd_endpoints %v after a change", got)
	}
	now := r.snapshot()
	if now["/host/opt/cni/bin/tabby"] != before["/host/opt/cni/bin/tabby"] {
		t.Error("tabby was rewritten although unchanged")
	}
	if now["/host/etc/cni/net.d/10-tabby.conflist"] == before["/host/etc/cni/net.d/10-tabby.conflist"] {
		t.Error("conflist not updated")
	}

	// sed's special characters in a value are kept as they are.
	r.mustRun(map[string]string{"ETCD_ENDPOINTS": "http://a&b:2379,http://c/d:2379"})
	if got := r.conflist()["etcd_endpoints"]; got != "http://a&b:2379,http://c/d:2379" {
		t.Errorf("etcd_endpoints %v", got)
	}

	// A new plugin binary replaces the old one.
	r.write(filepath.Join(r.src, "tabby"), "#!/bin/sh\necho fake tabby v2\n", 0o755)
	r.mustRun(nil)
	if got := read(t, filepath.Join(r.bin, "tabby")); !strings.Contains(got, "v2") {
		t.Errorf("tabby not upgraded: %q", got)
	}
}

func TestInstallCNIWithoutTLS(t *testing.T) {
	r := newCNIRun(t)
	r.mustRun(map[string]string{"ETCD_CA_CERT_FILE": "", "ETCD_CERT_FILE": "<unset>", "ETCD_KEY_FILE": ""})
	c := r.conflist()
	for _, k := range []string{"etcd_ca_cert_file", "etcd_cert_file", "etcd_key_file"} {
		if c[k] != "" {
			t.Errorf("%s = %v, want empty without TLS", k, c[k])
		}
	}
	if _, err := os.Stat(filepath.Join(r.net, "tabby-tls")); err == nil {
		t.Error("tabby-tls created without TLS")
	}
}

func TestInstallCNIKeepsHostPortmap(t *testing.T) {
	r := newCNIRun(t)
	if err := os.MkdirAll(r.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	r.write(filepath.Join(r.bin, "portmap"), "host portmap\n", 0o755)
	r.mustRun(nil)
	if got := read(t, filepath.Join(r.bin, "portmap")); got != "host portmap\n" {
		t.Errorf("the host's portmap was replaced: %q", got)
	}
	// From a file, and with no extra plugins.
	f := filepath.Join(r.root, "tmpl.conflist")
	r.write(f, r.template, 0o644)
	r.mustRun(map[string]string{"CNI_NETWORK_CONFIG": "", "CNI_NETWORK_CONFIG_FILE": f, "EXTRA_PLUGINS": ""})
	r.conflist()
}

func TestInstallCNIRefusesBadInput(t *testing.T) {
	for name, c := range map[string]struct {
		over map[string]string
		want string
	}{
		"no endpoints":           {map[string]string{"ETCD_ENDPOINTS": "<unset>"}, "ETCD_ENDPOINTS"},
		"quote in endpoints":     {map[string]string{"ETCD_ENDPOINTS": `http://a"b`}, "ETCD_ENDPOINTS"},
		"backslash in endpoints": {map[string]string{"ETCD_ENDPOINTS": `http://a\b`}, "ETCD_ENDPOINTS"},
		"newline in endpoints":   {map[string]string{"ETCD_ENDPOINTS": "http://a\nhttp://b"}, "ETCD_ENDPOINTS"},
		"pipe in endpoints":      {map[string]string{"ETCD_ENDPOINTS": "http://a|b"}, "ETCD_ENDPOINTS"},
		"unknown placeholder":    {map[string]string{"CNI_NETWORK_CONFIG": `{"plugins":[{"type":"tabby","x":"__NODENAME__"}]}`}, "__NODENAME__"},
		"empty TLS file":         {map[string]string{"ETCD_KEY_FILE": "/dev/null"}, "ETCD_KEY_FILE"},
		"missing TLS file":       {map[string]string{"ETCD_CA_CERT_FILE": "/nonexistent/ca"}, "ETCD_CA_CERT_FILE"},
		"no template":            {map[string]string{"CNI_NETWORK_CONFIG": "<unset>"}, "CNI_NETWORK_CONFIG"},
		"not a conflist":         {map[string]string{"CNI_NETWORK_CONFIG": "plugins: tabby"}, "{"},
		"no plugin binary":       {map[string]string{"SRC_BIN_DIR": "/nonexistent"}, "tabby"},
	} {
		t.Run(name, func(t *testing.T) {
			r := newCNIRun(t)
			r.mustRun(nil)
			good := r.snapshot()
			out, err := r.run(c.over)
			if err == nil {
				t.Fatalf("accepted:\n%s", out)
			}
			if !strings.Contains(out, c.want) {
				t.Errorf("error does not name %q:\n%s", c.want, out)
			}
			if now := r.snapshot(); !mapsEqual(good, now) {
				t.Errorf("a failed run changed the installed files")
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// Dockerfile.

type instr struct {
	cmd  string // upper case
	args string
}

type stage struct {
	from, name string
	instrs     []instr
}

type dockerfile struct{ stages []stage }

func parseDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	df := &dockerfile{}
	args := map[string]string{} // ARGs before the first FROM
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		cmd, rest, _ := strings.Cut(line, " ")
		in := instr{strings.ToUpper(cmd), strings.TrimSpace(rest)}
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			s := stage{from: os.Expand(f[0], func(k string) string { return args[k] })}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			df.stages = append(df.stages, s)
		case len(df.stages) == 0:
			if in.cmd == "ARG" {
				k, v, _ := strings.Cut(in.args, "=")
				args[k] = v
			}
		default:
			s := &df.stages[len(df.stages)-1]
			s.instrs = append(s.instrs, in)
		}
	}
	for _, l := range strings.Split(read(t, dockerfilePath), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			cur.WriteString(strings.TrimSuffix(l, "\\") + " ")
			continue
		}
		cur.WriteString(l)
		flush()
	}
	flush()
	return df
}

// copies returns the final stage's COPY instructions as (from, sources, dest).
func (df *dockerfile) copies() [][3]any {
	var out [][3]any
	last := df.stages[len(df.stages)-1]
	for _, in := range last.instrs {
		if in.cmd != "COPY" {
			continue
		}
		from := ""
		var words []string
		for _, w := range strings.Fields(in.args) {
			if v, ok := strings.CutPrefix(w, "--from="); ok {
				from = v
			} else if !strings.HasPrefix(w, "--") {
				words = append(words, w)
			}
		}
		out = append(out, [3]any{from, words[:len(words)-1], words[len(words)-1]})
	}
	return out
}

// copyDest is where the final stage copies src to (a file path).
func (df *dockerfile) copyDest(t *testing.T, src string) string {
	t.Helper()
	for _, c := range df.copies() {
		if slices.Contains(c[1].([]string), src) {
			d := c[2].(string)
			if strings.HasSuffix(d, "/") {
				if strings.HasPrefix(src, "/out/") {
					return strings.TrimSuffix(d, "/") // the directory, for SRC_BIN_DIR
				}
				return d + filepath.Base(src)
			}
			return d
		}
	}
	t.Fatalf("%s: the final stage does not COPY %s", dockerfilePath, src)
	return ""
}

func TestDockerfile(t *testing.T) {
	df := parseDockerfile(t)
	if len(df.stages) != 2 {
		t.Fatalf("want two stages (builder, runtime), have %d", len(df.stages))
	}
	b, final := df.stages[0], df.stages[1]
	if !strings.HasPrefix(b.from, "golang:1.26") || b.name == "" {
		t.Errorf("builder stage FROM %s AS %q: want golang:1.26 with a name", b.from, b.name)
	}
	if final.from != "debian:bookworm-slim" {
		t.Errorf("final stage FROM %s, want debian:bookworm-slim", final.from)
	}
	var build, runFinal strings.Builder
	for _, in := range b.instrs {
		if in.cmd == "RUN" {
			build.WriteString(in.args + "\n")
		}
	}
	for _, in := range final.instrs {
		if in.cmd == "RUN" {
			runFinal.WriteString(in.args + "\n")
		}
	}
	if !strings.Contains(build.String(), "CGO_ENABLED=0") {
		t.Error("build without CGO_ENABLED=0")
	}
	for bin, pkg := range buildPackages(t) {
		if !slices.Contains(binaries, bin) {
			continue
		}
		if !strings.Contains(build.String(), "-o /out/"+bin+" "+pkg) {
			t.Errorf("the builder does not build %s from %s as `make build` does", bin, pkg)
		}
		if dest := df.copyDest(t, "/out/"+bin); dest != "/opt/tabby/bin" {
			t.Errorf("%s copied to %s, want /opt/tabby/bin/", bin, dest)
		}
	}
	for _, c := range df.copies() {
		if c[0] != "" && c[0] != b.name {
			t.Errorf("COPY --from=%s: the builder is %s", c[0], b.name)
		}
		if c[0] == "" {
			for _, src := range c[1].([]string) {
				if _, err := os.Stat(filepath.Join("..", src)); err != nil {
					t.Errorf("COPY %s: not in the repository (build context is the root)", src)
				}
			}
		}
	}
	if got := df.copyDest(t, "conf/install-cni.sh"); got != "/opt/tabby/install-cni.sh" {
		t.Errorf("install-cni.sh at %s, want /opt/tabby/install-cni.sh", got)
	}
	if got, want := df.copyDest(t, "/out/cni/portmap"), scriptEnv(t)["EXTRA_BIN_DIR"]; got != want {
		t.Errorf("portmap copied to %s; install-cni.sh looks in %s", got, want)
	}
	for _, bin := range []string{"tabby-node", "tabbyctl"} {
		if !strings.Contains(runFinal.String(), "/opt/tabby/bin/"+bin+" /usr/local/bin/"+bin) {
			t.Errorf("%s is not put in /usr/local/bin", bin)
		}
	}
	for _, pkg := range []string{"iptables", "ipset", "iproute2", "conntrack"} {
		if !regexp.MustCompile(`apt-get install[^;&]*\b` + pkg + `\b`).MatchString(runFinal.String()) {
			t.Errorf("the image does not install %s", pkg)
		}
	}
	var entry []string
	for _, in := range final.instrs {
		if in.cmd == "ENTRYPOINT" {
			if err := json.Unmarshal([]byte(in.args), &entry); err != nil {
				t.Errorf("ENTRYPOINT %s: use the exec (JSON) form so signals reach tabby-node: %v", in.args, err)
			}
		}
	}
	if !slices.Equal(entry, []string{"/usr/local/bin/tabby-node"}) {
		t.Errorf("ENTRYPOINT %v, want [/usr/local/bin/tabby-node]", entry)
	}
}

// TestManifestControllersWired: the controllers' Deployment runs the
// binary make build makes, in tabby's image, as the account the binding
// grants the role to, with the DaemonSet's etcd settings.
func TestManifestControllersWired(t *testing.T) {
	m := loadManifest(t)
	spec := m.deploy.Spec.Template.Spec
	if spec.ServiceAccountName != m.ctrlSA.Name || len(m.bind.Subjects) != 1 || m.bind.Subjects[0].Name != m.ctrlSA.Name ||
		m.bind.Subjects[0].Namespace != m.ctrlSA.Namespace || m.bind.RoleRef.Name != m.role.Name {
		t.Errorf("account %s, binding %+v -> %s, role %s: not wired together", spec.ServiceAccountName, m.bind.Subjects, m.bind.RoleRef.Name, m.role.Name)
	}
	c := spec.Containers[0]
	if c.Image != m.ds.Spec.Template.Spec.Containers[0].Image {
		t.Errorf("controllers image %s, DaemonSet's %s", c.Image, m.ds.Spec.Template.Spec.Containers[0].Image)
	}
	if len(c.Command) != 1 || filepath.Base(c.Command[0]) != "tabby-kube-controllers" {
		t.Errorf("command %v", c.Command)
	}
	if buildPackages(t)["tabby-kube-controllers"] != "./kube-controllers" {
		t.Errorf("make build does not build tabby-kube-controllers from ./kube-controllers")
	}
	have := map[string]bool{}
	for _, e := range c.Env {
		have[e.Name] = true
	}
	for _, e := range m.ds.Spec.Template.Spec.Containers[0].Env {
		if strings.HasPrefix(e.Name, "ETCD_") && !have[e.Name] {
			t.Errorf("controllers lack %s", e.Name)
		}
	}
}
