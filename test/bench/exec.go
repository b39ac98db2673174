package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/test/lab"
)

// callTimeout bounds one plugin process; a hung plugin fails the run.
const callTimeout = 60 * time.Second

// bench is one run's lab, paths and settings.
type bench struct {
	s       *lab.Script // the run's cleanups
	p       paths
	l       *lab.Lab
	h       *lab.Host  // the host without tabby-node: every case but the deployed one
	hn      *lab.Host  // the host running tabby-node (the deployed configuration)
	node    *nodeBench // hn's tabby-node
	kv      store.KV   // the bench's own etcd client (it dials inside the lab)
	etcd    cpuMeter   // the lab's etcd server process
	nodeCPU cpuMeter   // hn's tabby-node process
	work    string     // netconf dirs, state dirs, host-local data, logs (in the lab's Dir)
	env     []string   // the environment every plugin run starts from
	nsN     int        // container namespace counter
}

// sample is one call: its wall time, the CPU time (user+system) of the
// process and of every descendant it waited for (cnitool's plugins, tabby's
// tabby-ipam), and the etcd server's CPU time meanwhile (sequential calls
// only; 0 when not measured).
type sample struct {
	wall, cpu, etcd time.Duration
}

// timedRun runs cmd in the network namespace at nsPath. The child is forked
// from an OS thread that has joined the namespace (lab.InNS), so it starts
// there without a wrapper: `ip netns exec` would add its own start-up and a
// /sys remount to every sample and shrink every ratio towards 1.
func timedRun(nsPath string, cmd *exec.Cmd) (sample, error) {
	var start time.Time
	err := lab.InNS(nsPath, func() error {
		start = time.Now()
		return cmd.Start()
	})
	if err != nil {
		if cmd.Process != nil { // started, but the thread could not return
			_ = cmd.Wait()
		}
		return sample{}, fmt.Errorf("start %s in %s: %w", filepath.Base(cmd.Path), nsPath, err)
	}
	err = cmd.Wait()
	s := sample{wall: time.Since(start)}
	if ps := cmd.ProcessState; ps != nil {
		// wait4's rusage counts the children the process itself reaped.
		s.cpu = ps.UserTime() + ps.SystemTime()
	}
	return s, err
}

// run executes argv in host h's namespace with env and stdin and returns
// the sample and stdout; a non-zero exit is an error that quotes the output.
func (b *bench) run(h *lab.Host, argv, env []string, stdin []byte) (sample, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	s, err := timedRun(h.NSPath, cmd)
	if err != nil {
		stderr := errb.Bytes()
		if i := bytes.Index(stderr, []byte("\nUsage:")); i >= 0 { // cnitool's help after an error
			stderr = stderr[:i]
		}
		return s, out.Bytes(), fmt.Errorf("%s: %w: %s %s", strings.Join(argv, " "), err,
			bytes.TrimSpace(out.Bytes()), bytes.TrimSpace(stderr))
	}
	return s, out.Bytes(), nil
}

// cleanEnv is the bench's environment without what would change how a
// plugin or cnitool behaves.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "CNI_") || strings.HasPrefix(k, "ETCD_") ||
			k == "NETCONFPATH" || k == "CAP_ARGS" || k == "GODEBUG" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// containers creates n empty container namespaces on host h and returns
// their paths. One at a time: lab.AddContainer ends the program on error,
// and a namespace being created while the lab closes could be missed.
func (b *bench) containers(h *lab.Host, n int) []string {
	paths := make([]string, n)
	for i := range paths {
		b.nsN++
		_, paths[i] = b.l.AddContainer(h, fmt.Sprintf("b%d", b.nsN))
	}
	return paths
}

// removeContainers deletes container namespaces, four at a time.
func (b *bench) removeContainers(paths []string) error {
	return parallel(4, len(paths), func(i int) error {
		return b.l.RemoveContainer(filepath.Base(paths[i]))
	})
}

// parallel runs f(0..n-1) on workers goroutines and returns the first error;
// after an error the remaining indexes are skipped.
func parallel(workers, n int, f func(i int) error) error {
	var (
		mu    sync.Mutex
		next  int
		first error
		wg    sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				stop := first != nil || i >= n
				mu.Unlock()
				if stop {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return first
}

// cpuMeter reads a running process's CPU time (lab.CPUTime).
type cpuMeter struct{ pid int }

func (m cpuMeter) read() time.Duration { return lab.CPUTime(m.pid) }
