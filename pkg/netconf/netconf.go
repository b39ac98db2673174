// Package netconf parses what a CNI runtime hands tabby's plugins: the network
// configuration (stdin), CNI_ARGS, args and runtimeConfig. Everything here is
// untrusted input and is fuzzed.
package netconf

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/selector"
)

// IPAM is the ipam section for tabby-ipam.
type IPAM struct {
	Type           string   `json:"type"`
	AssignIPv4     *bool    `json:"assign_ipv4,omitempty"`
	AssignIPv6     bool     `json:"assign_ipv6"`
	IPv4Pools      []string `json:"ipv4_pools"`
	IPv6Pools      []string `json:"ipv6_pools"`
	StrictAffinity bool     `json:"strict_affinity"`
	// Result "host" answers /32 and /128 with gateway 169.254.1.1 (the
	// default under tabby); "block" answers the block's prefix with the
	// block's first address as gateway (the default under any other main
	// plugin, e.g. ptp and bridge; that address is then never handed out:
	// give such networks their own pool).
	Result string `json:"result,omitempty"`
	Etcd
	Nodename string `json:"nodename,omitempty"`
	StateDir string `json:"state_dir,omitempty"`
}

// Etcd holds the datastore settings (top level, or inside ipam for tabby-ipam
// under another main plugin).
type Etcd struct {
	Endpoints  string `json:"etcd_endpoints,omitempty"`
	CACertFile string `json:"etcd_ca_cert_file,omitempty"`
	CertFile   string `json:"etcd_cert_file,omitempty"`
	KeyFile    string `json:"etcd_key_file,omitempty"`
}

// NetConf is the whole network configuration tabby understands.
type NetConf struct {
	CNIVersion string          `json:"cniVersion"`
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	PrevResult json.RawMessage `json:"prevResult,omitempty"`
	Etcd
	Nodename string `json:"nodename"`
	StateDir string `json:"state_dir"`
	// NodenameFileRequired: with no nodename configured, take it only from
	// <state_dir>/nodename, never the hostname. A host's name in the
	// cluster is tabby-node's to say; after a reboot the runtime may start
	// pods before tabby-node has written the file again, and an ADD that
	// guessed the hostname would record its pod under a host no daemon
	// serves (the Kubernetes manifest sets it).
	NodenameFileRequired bool `json:"nodename_file_required"`
	// K8sPodRequired: a Kubernetes pod's ADD waits for the pod's record
	// that tabby-kube-controllers writes (its labels, named ports and
	// profile annotation) and fails with 11 when it does not come, rather
	// than wiring a pod whose policies cannot be known (the manifest sets
	// it). Without it a missing record means no labels.
	K8sPodRequired bool     `json:"k8s_pod_record_required"`
	MTU            int      `json:"mtu"`
	Profiles       []string `json:"profiles"`
	LogFile        string   `json:"log_file"`
	LogLevel       string   `json:"log_level"`
	PolicyTimeout  float64  `json:"policy_setup_timeout_seconds"`
	// IPAMExec makes tabby exec tabby-ipam like any IPAM plugin. By default
	// tabby runs the same IPAM code in its own process when the ipam type is
	// tabby-ipam: one process start and one etcd connection less per ADD.
	IPAMExec      bool `json:"ipam_exec"`
	IPAM          IPAM `json:"ipam"`
	RuntimeConfig struct {
		IPs []string `json:"ips"`
	} `json:"runtimeConfig"`
	Args struct {
		Tabby struct {
			Profiles []string          `json:"profiles"`
			Labels   map[string]string `json:"labels"`
		} `json:"tabby"`
		CNI struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
	ValidAttachments []struct {
		ContainerID string `json:"containerID"`
		IfName      string `json:"ifname"`
	} `json:"cni.dev/valid-attachments"`
}

// DefaultStateDir is where the node daemon and plugins keep local state.
const DefaultStateDir = "/var/run/tabby"

// Parse decodes and validates stdin of a plugin.
func Parse(b []byte) (*NetConf, error) {
	var c NetConf
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, cnierr.New(cnierr.BadConfig, "network configuration is not valid JSON: %v", err)
	}
	if c.Name == "" {
		return nil, cnierr.New(cnierr.BadConfig, "network configuration has no \"name\"")
	}
	if err := model.ValidName(c.Name); err != nil {
		return nil, cnierr.New(cnierr.BadConfig, "network name: %v", err)
	}
	if c.MTU < 0 || (c.MTU > 0 && c.MTU < 576) || c.MTU > 65535 {
		return nil, cnierr.New(cnierr.BadConfig, "mtu %d is out of range; use 0 (derive from the uplink) or 576..65535", c.MTU)
	}
	for _, p := range c.Profiles {
		if err := model.ValidName(p); err != nil {
			return nil, cnierr.New(cnierr.BadConfig, "profile in \"profiles\": %v", err)
		}
	}
	switch c.IPAM.Result {
	case "", "host", "block":
	default:
		return nil, cnierr.New(cnierr.BadConfig, "ipam result %q: use \"host\" or \"block\"", c.IPAM.Result)
	}
	for _, p := range append(append([]string{}, c.IPAM.IPv4Pools...), c.IPAM.IPv6Pools...) {
		if _, err := model.CanonicalCIDR(p); err != nil {
			return nil, cnierr.New(cnierr.BadConfig, "ipam pool: %v", err)
		}
	}
	if c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
		// Relative to what? The runtime's working directory, which is no
		// place for a log (and a mutated netconf could aim it anywhere).
		return nil, cnierr.New(cnierr.BadConfig, "log_file %q is a relative path; give an absolute path such as /var/log/tabby/cni.log", c.LogFile)
	}
	if c.PolicyTimeout < 0 {
		return nil, cnierr.New(cnierr.BadConfig, "policy_setup_timeout_seconds must not be negative")
	}
	return &c, nil
}

// BlockResult reports whether the IPAM answers in block shape (the block's
// prefix, its first address as the gateway), which is what ptp and bridge
// need to route, rather than /32 and /128 behind tabby's link-local gateway.
// It is the default under any main plugin but tabby, so a conflist written
// the way host-local users write it works; "result" overrides.
func (c *NetConf) BlockResult() bool {
	switch c.IPAM.Result {
	case "block":
		return true
	case "host":
		return false
	}
	return c.Type != "tabby"
}

// AssignV4 reports whether an IPv4 address is wanted (default yes).
func (c *NetConf) AssignV4() bool { return c.IPAM.AssignIPv4 == nil || *c.IPAM.AssignIPv4 }

// EtcdConfig merges the etcd settings: ipam section over top level over the
// environment (ETCD_ENDPOINTS ...) over the local default.
func (c *NetConf) EtcdConfig() Etcd {
	e := c.Etcd
	pick := func(dst *string, vals ...string) {
		for _, v := range vals {
			if v != "" {
				*dst = v
				return
			}
		}
	}
	pick(&e.Endpoints, c.IPAM.Endpoints, c.Endpoints, os.Getenv("ETCD_ENDPOINTS"), "http://127.0.0.1:2379")
	pick(&e.CACertFile, c.IPAM.CACertFile, c.CACertFile, os.Getenv("ETCD_CA_CERT_FILE"))
	pick(&e.CertFile, c.IPAM.CertFile, c.CertFile, os.Getenv("ETCD_CERT_FILE"))
	pick(&e.KeyFile, c.IPAM.KeyFile, c.KeyFile, os.Getenv("ETCD_KEY_FILE"))
	return e
}

// EndpointList splits the comma-separated endpoints.
func (e Etcd) EndpointList() []string {
	var out []string
	for _, s := range strings.Split(e.Endpoints, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// State returns the state dir: ipam section, top level, default.
func (c *NetConf) State() string {
	if c.IPAM.StateDir != "" {
		return c.IPAM.StateDir
	}
	if c.StateDir != "" {
		return c.StateDir
	}
	return DefaultStateDir
}

// NoNodenameError: nodename_file_required and tabby-node has not written
// the file (yet).
type NoNodenameError struct{ File string }

func (e *NoNodenameError) Error() string {
	return fmt.Sprintf("no nodename configured and %s missing or empty (nodename_file_required): tabby-node writes it when it starts; is it running on this host?", e.File)
}

// Node returns this host's name: configured, else what the node daemon wrote
// to <state_dir>/nodename, else (unless nodename_file_required) the
// hostname.
func (c *NetConf) Node() (string, error) {
	for _, n := range []string{c.IPAM.Nodename, c.Nodename} {
		if n != "" {
			return n, model.ValidName(n)
		}
	}
	file := filepath.Join(c.State(), "nodename")
	if b, err := os.ReadFile(file); err == nil {
		if n := strings.TrimSpace(string(b)); n != "" {
			return n, model.ValidName(n)
		}
	}
	if c.NodenameFileRequired {
		return "", &NoNodenameError{File: file}
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("no nodename configured and no hostname: %w", err)
	}
	return h, nil
}

// Args is what CNI_ARGS and the netconf's args/runtimeConfig say about one
// workload.
type Args struct {
	IPs          []net.IP
	Profiles     []string
	Workload     string
	Orchestrator string
	K8sNamespace string
	K8sPod       string
	K8sPodUID    string
	// Labels of a workload that no orchestrator labels (TABBY_LABELS,
	// args.tabby.labels); a Kubernetes pod's come from its record.
	Labels map[string]string
}

// ParseArgs reads CNI_ARGS ("K=V;K=V") and merges the netconf's runtimeConfig
// ips, args.cni.ips and args.tabby.profiles. Unknown keys are an error unless
// IgnoreUnknown is set, as with the reference plugins.
func ParseArgs(cniArgs string, c *NetConf) (*Args, error) {
	a := &Args{Orchestrator: model.OrchestratorCNI}
	ignoreUnknown := false
	var unknown []string
	var ipStrs []string
	if cniArgs != "" {
		for _, kv := range strings.Split(cniArgs, ";") {
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, cnierr.New(cnierr.BadArgs, "CNI_ARGS item %q is not KEY=VALUE", kv)
			}
			switch k {
			case "IgnoreUnknown":
				ignoreUnknown = v == "1" || strings.EqualFold(v, "true")
			case "IP":
				ipStrs = append(ipStrs, strings.Split(v, ",")...)
			case "TABBY_PROFILES":
				for _, p := range strings.Split(v, ",") {
					if p = strings.TrimSpace(p); p != "" {
						a.Profiles = append(a.Profiles, p)
					}
				}
			case "TABBY_WORKLOAD":
				a.Workload = v
			case "TABBY_ORCHESTRATOR":
				a.Orchestrator = v
			case "K8S_POD_NAMESPACE":
				a.K8sNamespace = v
			case "K8S_POD_NAME":
				a.K8sPod = v
			case "TABBY_LABELS":
				if err := parseLabels(v, a); err != nil {
					return nil, err
				}
			case "K8S_POD_UID":
				a.K8sPodUID = v
			case "K8S_POD_INFRA_CONTAINER_ID":
			default:
				unknown = append(unknown, k)
			}
		}
	}
	if len(unknown) > 0 && !ignoreUnknown {
		return nil, cnierr.New(cnierr.BadArgs, "CNI_ARGS has unknown keys %v; tabby knows IP, TABBY_PROFILES, TABBY_LABELS, TABBY_WORKLOAD, TABBY_ORCHESTRATOR, K8S_POD_NAMESPACE, K8S_POD_NAME (add IgnoreUnknown=1 to ignore others)", unknown)
	}
	if c != nil {
		ipStrs = append(ipStrs, c.RuntimeConfig.IPs...)
		ipStrs = append(ipStrs, c.Args.CNI.IPs...)
		a.Profiles = append(a.Profiles, c.Args.Tabby.Profiles...)
		for k, v := range c.Args.Tabby.Labels {
			if a.Labels == nil {
				a.Labels = map[string]string{}
			}
			a.Labels[k] = v
		}
	}
	if err := selector.ValidLabels(a.Labels); err != nil {
		return nil, cnierr.New(cnierr.BadArgs, "workload labels: %v", err)
	}
	seen := map[string]bool{}
	has4, has6 := false, false
	for _, s := range ipStrs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		// runtimeConfig.ips may carry a prefix ("10.0.0.1/24"); only the address counts.
		addr := s
		if i := strings.IndexByte(s, '/'); i >= 0 {
			addr = s[:i]
		}
		ip := net.ParseIP(addr)
		if ip == nil {
			return nil, cnierr.New(cnierr.BadArgs, "IP %q is not an IP address", s)
		}
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		if seen[ip.String()] {
			continue
		}
		seen[ip.String()] = true
		if ip.To4() != nil {
			if has4 {
				return nil, cnierr.New(cnierr.BadArgs, "more than one IPv4 address requested (%s); a workload gets one per family", s)
			}
			has4 = true
		} else {
			if has6 {
				return nil, cnierr.New(cnierr.BadArgs, "more than one IPv6 address requested (%s); a workload gets one per family", s)
			}
			has6 = true
		}
		a.IPs = append(a.IPs, ip)
	}
	if a.K8sNamespace != "" || a.K8sPod != "" {
		if a.K8sNamespace == "" || a.K8sPod == "" {
			return nil, cnierr.New(cnierr.BadArgs, "K8S_POD_NAMESPACE and K8S_POD_NAME must come together")
		}
		a.Orchestrator = model.OrchestratorK8s
		if a.Workload == "" {
			a.Workload = a.K8sNamespace + "." + a.K8sPod
		}
		a.Profiles = append(a.Profiles, model.K8sNamespaceProfile(a.K8sNamespace))
	}
	switch a.Orchestrator {
	case model.OrchestratorCNI, model.OrchestratorK8s, model.OrchestratorDock:
	default:
		return nil, cnierr.New(cnierr.BadArgs, "TABBY_ORCHESTRATOR %q: use cni, k8s or docker", a.Orchestrator)
	}
	if a.Workload != "" {
		if err := model.ValidName(a.Workload); err != nil {
			return nil, cnierr.New(cnierr.BadArgs, "workload name: %v", err)
		}
	}
	for _, p := range a.Profiles {
		if err := model.ValidName(p); err != nil {
			return nil, cnierr.New(cnierr.BadArgs, "profile: %v", err)
		}
	}
	return a, nil
}

// parseLabels reads TABBY_LABELS: key=value pairs joined by commas
// (app=web,tier=front); a key alone is an empty value.
func parseLabels(v string, a *Args) error {
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		k, val, _ := strings.Cut(item, "=")
		if a.Labels == nil {
			a.Labels = map[string]string{}
		}
		if _, dup := a.Labels[k]; dup {
			return cnierr.New(cnierr.BadArgs, "TABBY_LABELS names %q twice", k)
		}
		a.Labels[k] = val
	}
	return nil
}
