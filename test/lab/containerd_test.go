package lab

import (
	"strings"
	"testing"
)

func TestContainerdConfig(t *testing.T) {
	c := ContainerdIn("/d")
	c.SandboxImage, c.CNIBinDir, c.CNIConfDir = "pause:1", "/opt/cni/bin", "/etc/cni/net.d"
	s := c.TOML()
	for _, want := range []string{
		`root = "/d/root"`, `state = "/d/state"`, "[grpc]\n  address = \"/d/containerd.sock\"",
		"[ttrpc]\n  address = \"/d/containerd.sock.ttrpc\"", "path = \"/d/opt\"", `sandbox_image = "pause:1"`,
		"restrict_oom_score_adj = true", "SystemdCgroup = false\n        Root = \"/d/runc\"",
		`bin_dir = "/opt/cni/bin"`, `conf_dir = "/etc/cni/net.d"`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %q in\n%s", want, s)
		}
	}
	for _, not := range []string{"[debug]", "BinaryName", `devmapper", "io.containerd.grpc.v1.cri"]`} {
		if strings.Contains(s, not) {
			t.Errorf("unexpected %q in\n%s", not, s)
		}
	}

	c.DebugLevel, c.RuncBinary = "warn", "/usr/sbin/runc"
	s = c.TOML()
	for _, want := range []string{"[debug]\n  level = \"warn\"\n[metrics]", "BinaryName = \"/usr/sbin/runc\"\n        Root = \"/d/runc\""} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %q in\n%s", want, s)
		}
	}

	c = ContainerdIn("/d")
	c.NoCRI = true
	s = c.TOML()
	if !strings.Contains(s, `"io.containerd.snapshotter.v1.devmapper", "io.containerd.grpc.v1.cri"]`) || strings.Contains(s, "[plugins.\"io.containerd.grpc.v1.cri\"]") {
		t.Errorf("CRI not disabled:\n%s", s)
	}
}
