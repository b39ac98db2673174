package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runCmd runs a command in the lab process's own context and returns its
// combined output (for error messages).
func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// ipn runs ip commands inside namespace ns in one `ip -batch` process.
// Arguments must not contain spaces.
func ipn(ns string, cmds ...[]string) error {
	var script strings.Builder
	for _, c := range cmds {
		script.WriteString(strings.Join(c, " "))
		script.WriteByte('\n')
	}
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s: %w: %s\nbatch:\n%s", ns, err, bytes.TrimSpace(out), script.String())
	}
	return nil
}

// Command prepares argv to run inside namespace ns, for callers that need
// to set Env, Stdin or Dir themselves (a CNI plugin call, for instance).
// It uses `ip netns exec`, which also mounts a /sys that shows the
// namespace's own interfaces, and execs argv in place, so cmd.Process.Pid
// is argv's PID.
func (l *Lab) Command(ns string, argv ...string) *exec.Cmd {
	return l.CommandContext(context.Background(), ns, argv...)
}

// CommandContext is Command with a context that kills the command.
func (l *Lab) CommandContext(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	if ns == "" {
		// Never fall through to the root namespace by accident.
		panic("lab: Command with empty namespace")
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
}

// Exec runs argv inside namespace ns and returns its stdout. On failure the
// error includes stderr.
func (l *Lab) Exec(ns string, argv ...string) (string, error) {
	return l.ExecContext(context.Background(), ns, argv...)
}

// ExecContext is Exec with a context that kills the command.
func (l *Lab) ExecContext(ctx context.Context, ns string, argv ...string) (string, error) {
	if ns == "" || len(argv) == 0 {
		return "", fmt.Errorf("exec %q in namespace %q: need both", argv, ns)
	}
	cmd := l.CommandContext(ctx, ns, argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), ns, err,
			strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// MustExec is Exec that fails the test on error.
func (l *Lab) MustExec(ns string, argv ...string) string {
	l.tb.Helper()
	out, err := l.Exec(ns, argv...)
	if err != nil {
		l.tb.Fatalf("lab: %v", err)
	}
	return out
}

// Proc is a background process started by Start.
type Proc struct {
	PID  int
	NS   string
	Args []string
	Log  string    // file with the process's stdout and stderr
	Cmd  *exec.Cmd // the started command (read only)
	// Started is when it was started: a Go program's GODEBUG=gctrace=1
	// times its collections from then.
	Started time.Time

	done chan struct{} // closed once the process has exited and been reaped
	err  error         // exit status, valid after done
}

// Start runs argv in the background inside namespace ns, with stdout and
// stderr appended to logfile ("" means a file in the lab's Dir). The process
// gets its own process group, so a Ctrl-C at the terminal reaches only the
// test process, which then stops the lab in order. Close stops it (SIGTERM,
// then SIGKILL after 5 s) along with anything it spawned.
func (l *Lab) Start(ns, logfile string, argv ...string) *Proc {
	l.tb.Helper()
	if ns == "" {
		// Never fall through to the root namespace by accident.
		l.tb.Fatalf("lab: Start %q with empty namespace", argv)
	}
	p, err := l.start(ns, logfile, nil, argv...)
	if err != nil {
		l.tb.Fatalf("lab: %v", err)
	}
	return p
}

// StartEntering is Start for an argv that enters a lab namespace itself:
// nsenter with --net=<a lab namespace's path>, or -t PID --net of a process
// in one (a runtime daemon that needs its own mount namespace too). It runs
// as is, not under `ip netns exec`, which remounts /sys and hides the cgroup
// hierarchy that runc needs. Close stops it like any other process.
func (l *Lab) StartEntering(logfile string, argv ...string) *Proc {
	l.tb.Helper()
	if len(argv) == 0 || argv[0] != "nsenter" || !slices.ContainsFunc(argv, func(a string) bool {
		return a == "--net" || strings.HasPrefix(a, "--net="+nsRoot+"/"+l.ID+"-")
	}) {
		// Never start something in the root namespace by accident.
		l.tb.Fatalf("lab: StartEntering %q: argv must be nsenter into a lab namespace", argv)
	}
	p, err := l.start("", logfile, nil, argv...)
	if err != nil {
		l.tb.Fatalf("lab: %v", err)
	}
	return p
}

// start is Start that returns errors; stdout, if not nil, receives the
// process's stdout instead of the log file. ns "" runs argv as is (for
// StartEntering).
func (l *Lab) start(ns, logfile string, stdout io.Writer, argv ...string) (*Proc, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("start %q in namespace %q: nothing to run", argv, ns)
	}
	var log *os.File
	var err error
	if logfile == "" {
		log, err = l.newLog(filepath.Base(argv[0]))
	} else {
		log, err = os.OpenFile(logfile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	}
	if err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", argv[0], ns, err)
	}
	logfile = log.Name()
	defer log.Close() // the child has its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	if ns != "" {
		cmd = l.Command(ns, argv...)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	l.mu.Lock()
	defer l.mu.Unlock()
	// Checked under the lock so that Close, which takes the process list
	// under the same lock, can never miss a process started concurrently.
	if l.closed {
		return nil, fmt.Errorf("start %s in %s: lab is closed", argv[0], ns)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", argv[0], ns, err)
	}
	p := &Proc{PID: cmd.Process.Pid, NS: ns, Args: argv, Log: logfile, Cmd: cmd, Started: time.Now(), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	return p, nil
}

// newLog creates a new log file in the lab's Dir: base.log, base.1.log, ...
func (l *Lab) newLog(base string) (*os.File, error) {
	for i := 0; ; i++ {
		name := base + ".log"
		if i > 0 {
			name = fmt.Sprintf("%s.%d.log", base, i)
		}
		f, err := os.OpenFile(filepath.Join(l.Dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if !errors.Is(err, os.ErrExist) {
			return f, err
		}
	}
}

// Kill sends sig to the process (not to its children).
func (p *Proc) Kill(sig os.Signal) error {
	if err := p.Cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %v to %s (pid %d): %w", sig, p.Args[0], p.PID, err)
	}
	return nil
}

// Wait blocks until the process exits and returns its exit status. It may
// be called any number of times, from any goroutine.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// WaitTimeout is Wait with a limit; it returns an error if the process is
// still running after d.
func (p *Proc) WaitTimeout(d time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		return fmt.Errorf("%s (pid %d) still running after %v", p.Args[0], p.PID, d)
	}
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM, waits up to timeout, then SIGKILLs; it returns the
// exit status. Only the process itself is signalled.
func (p *Proc) Stop(timeout time.Duration) error {
	if !p.Exited() {
		_ = p.Kill(syscall.SIGTERM)
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.Kill(syscall.SIGKILL)
		<-p.done
	}
	return p.err
}

// stopGroup is Stop for the whole process group, used by Close so that
// children the process spawned go too.
func (p *Proc) stopGroup(timeout time.Duration) {
	signalGroup := func(sig syscall.Signal) {
		// The group ID is the PID we started; while our process is not yet
		// reaped its PID cannot be reused, so this never hits a stranger.
		if !p.Exited() {
			_ = syscall.Kill(-p.PID, sig)
		}
	}
	signalGroup(syscall.SIGTERM)
	if p.WaitTimeout(timeout) != nil && !p.Exited() {
		signalGroup(syscall.SIGKILL)
	}
	<-p.done
}

// Tail returns the last n lines of a file (or why it cannot be read): for
// the end of a daemon's log in a failure message.
func Tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// CPUTime is a running process's CPU time, summed over its threads, from
// /proc/PID/task/*/schedstat (nanoseconds, unlike the clock ticks of
// /proc/PID/stat); 0 for pid 0. Threads that already exited are not
// counted.
func CPUTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			sum += time.Duration(ns)
		}
	}
	return sum
}
