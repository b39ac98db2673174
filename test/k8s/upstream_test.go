package k8s

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/test/k8s/cluster"
)

// suite is one selection of Kubernetes' own e2e suite (e2e.test, built from
// the same k8s.io/kubernetes release as the cluster).
type suite struct {
	name  string
	focus string
	skip  string
	want  int // specs the selection runs in v1.37.2
	// timeout bounds the whole run: a failing spec retries its probes for
	// minutes, a passing one takes seconds.
	timeout time.Duration
	// procs > 1 runs the specs in that many e2e.test processes under the
	// ginkgo runner, as the upstream CI does for parallel-safe suites.
	procs int
}

// Selections the cluster lab runs; what is skipped and why is in the
// README's Kubernetes section.
// This kernel has no SCTP: the SCTPConnectivity cases (whose servers
// cannot even listen) are skipped, as the suite expects of such clusters.
var upstreamSuites = []suite{
	{name: "Networking Granular Checks: Pods", focus: `\[sig-network\] Networking Granular Checks: Pods`, skip: `SCTPConnectivity`, want: 4, timeout: 15 * time.Minute},
	{name: "Services [Conformance]", focus: `\[sig-network\] Services .*\[Conformance\]`, want: 15, timeout: 30 * time.Minute},
	netpolSuite,
}

var ranRe = regexp.MustCompile(`Ran (\d+) of (\d+) Specs`)
var passRe = regexp.MustCompile(`(\d+) Passed \| (\d+) Failed`)

// runUpstream runs a selection of e2e.test against the cluster from the
// API server's namespace and fails the test unless every selected spec
// passed and the count is the one expected. The selection and the counts
// are printed (make test-k8s shows them).
func (e *env) runUpstream(t *testing.T, s suite) {
	t.Helper()
	bin := filepath.Join(cluster.BinDir(), "e2e.test")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s missing: make k8s-bins builds it", bin)
	}
	report := filepath.Join(e.Dir, "e2e-"+strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '-'
	}, s.name))
	if err := os.MkdirAll(report, 0o755); err != nil {
		t.Fatal(err)
	}
	suiteArgs := []string{"--kubeconfig=" + e.Kubeconfig, "--provider=skeleton",
		"--kubectl-path=" + filepath.Join(cluster.BinDir(), "kubectl"),
		// The system pods are tabby's: the suite waits for them as it
		// would for any cluster's.
		"--minStartupPods=1", "--report-dir=" + report,
		"--dump-logs-on-failure=false",
	}
	ginkgoArgs := []string{"focus=" + s.focus, "no-color", "timeout=" + s.timeout.String()}
	if s.skip != "" {
		ginkgoArgs = append(ginkgoArgs, "skip="+s.skip)
	}
	args := []string{"ip", "netns", "exec", e.Lab.Underlay}
	if s.procs > 1 {
		args = append(args, filepath.Join(cluster.BinDir(), "ginkgo"), fmt.Sprintf("--procs=%d", s.procs))
		for _, a := range ginkgoArgs {
			args = append(args, "--"+a)
		}
		args = append(append(args, bin, "--"), suiteArgs...)
	} else {
		args = append(args, bin)
		for _, a := range ginkgoArgs {
			args = append(args, "--ginkgo."+a)
		}
		args = append(args, suiteArgs...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout+2*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = report
	// The output goes to a file as it comes, for whoever follows a long run.
	outPath := filepath.Join(report, "output.txt")
	f, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	t.Logf("e2e.test output: %s", outPath)
	err = cmd.Run()
	f.Close()
	took := time.Since(start)
	out, rerr := os.ReadFile(outPath)
	if rerr != nil {
		t.Fatal(rerr)
	}
	ran, passed, failed := -1, -1, -1
	if m := ranRe.FindSubmatch(out); m != nil {
		ran, _ = strconv.Atoi(string(m[1]))
	}
	if m := passRe.FindSubmatch(out); m != nil {
		passed, _ = strconv.Atoi(string(m[1]))
		failed, _ = strconv.Atoi(string(m[2]))
	}
	summary := fmt.Sprintf("upstream e2e %q (focus %s, skip %q): ran %d, passed %d, failed %d (want %d) in %s",
		s.name, s.focus, s.skip, ran, passed, failed, s.want, took.Round(time.Second))
	fmt.Println("=== " + summary)
	t.Log(summary)
	if err != nil || ran != s.want || passed != s.want {
		t.Errorf("%s: %v\n%s", summary, err, failures(string(out)))
	}
}

// failures is the part of the suite's output that says what failed.
func failures(out string) string {
	if i := strings.Index(out, "Summarizing"); i >= 0 {
		return out[i:]
	}
	return tailLines(out, 80)
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// TestUpstreamNetworking runs Kubernetes' own networking suites in a tabby
// cluster.
func TestUpstreamNetworking(t *testing.T) {
	e := newEnv(t, 3)
	for _, s := range upstreamSuites {
		t.Run(s.name, func(t *testing.T) { e.runUpstream(t, s) })
	}
}
