package lab

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Every lab records itself in stateRoot/<id>/owner ("<pid> <start time>")
// for as long as it exists. That record is what lets CleanupStale tell a
// crashed run's namespaces (owner gone) from a lab that another test
// process is using right now (owner alive), and it keeps CleanupStale away
// from namespaces that merely look like ours.
const stateRoot = "/run/tabby-lab"

// lockState serializes claiming a lab ID with stale-lab cleanup.
func lockState() (unlock func(), err error) {
	if err := os.MkdirAll(stateRoot, 0o755); err != nil {
		return nil, fmt.Errorf("lab state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(stateRoot, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab state lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lab state lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// claim reserves lab ID id for this process and returns its work directory.
func claim(id string) (string, error) {
	unlock, err := lockState()
	if err != nil {
		return "", err
	}
	defer unlock()
	dir := filepath.Join(stateRoot, id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("lab %s exists already (%s)", id, dir)
		}
		return "", fmt.Errorf("claim lab %s: %w", id, err)
	}
	// Namespaces with our naming scheme but no record are someone else's.
	if names := namespacesOf(id); len(names) > 0 {
		os.Remove(dir)
		return "", fmt.Errorf("lab %s: unrecorded namespaces %v exist; not ours, not touching them", id, names)
	}
	start, err := startTime(os.Getpid())
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "owner"), fmt.Appendf(nil, "%d %d\n", os.Getpid(), start), 0o644)
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("claim lab %s: %w", id, err)
	}
	return dir, nil
}

// CleanupStale removes what crashed runs left behind: for every recorded
// lab whose ID starts with prefix ("" means every lab) and whose owner
// process is gone, it kills the processes in the lab's namespaces and
// deletes the namespaces and the lab's work directory. Labs whose owner is
// still running, and namespaces no lab recorded, are left alone. New calls
// it, so a crashed run is cleaned up by the next one.
func CleanupStale(prefix string) error {
	unlock, err := lockState()
	if err != nil {
		return err
	}
	defer unlock()
	entries, err := os.ReadDir(stateRoot)
	if err != nil {
		return fmt.Errorf("cleanup stale labs: %w", err)
	}
	var errs []error
	for _, e := range entries {
		id := e.Name()
		if !e.IsDir() || !idPattern.MatchString(id) || !strings.HasPrefix(id, prefix) {
			continue
		}
		dir := filepath.Join(stateRoot, id)
		if ownerAlive(dir) {
			continue
		}
		if err := removeLab(id, dir); err != nil {
			errs = append(errs, fmt.Errorf("stale lab %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// removeLab kills everything in lab id's namespaces, then deletes them and
// its directory.
func removeLab(id, dir string) error {
	names := namespacesOf(id)
	for _, ns := range names {
		killNSProcs(ns)
	}
	var errs []error
	for _, ns := range names {
		if err := delNS(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// namespacesOf lists the named namespaces of lab id: "<id>-...".
func namespacesOf(id string) []string {
	entries, _ := os.ReadDir(nsRoot)
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id+"-") {
			names = append(names, e.Name())
		}
	}
	return names
}

func ownerAlive(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "owner"))
	if err != nil {
		return false // claim writes it under the lock: missing means crashed
	}
	var pid int
	var start uint64
	if _, err := fmt.Sscanf(string(b), "%d %d", &pid, &start); err != nil {
		return false
	}
	// The start time guards against a new process having the old PID.
	now, err := startTime(pid)
	return err == nil && now == start
}

// startTime is a process's start time in clock ticks since boot (field 22
// of /proc/PID/stat).
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	// The command name (field 2) may contain spaces; fields after it don't.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3
	if len(f) < 20 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// A reaper is a tiny shell process that outlives a test process killed
// without running any Go code (a `go test -timeout` panic, SIGKILL, a
// panic on another goroutine): it reads its stdin, which only the test
// process holds open; EOF without "done" means the owner died, and it
// removes the lab. It has its own process group so a terminal's Ctrl-C
// does not take it down with the test.
type reaper struct {
	cmd *exec.Cmd
	in  io.WriteCloser
}

const reaperScript = `
trap '' INT TERM HUP
IFS= read -r line
[ "$line" = done ] && exit 0
for ns in $(ls /run/netns 2>/dev/null); do
	case "$ns" in "$1"-*) pids=$(ip netns pids "$ns"); [ -n "$pids" ] && kill -9 $pids ;; esac
done
sleep 0.2
for ns in $(ls /run/netns 2>/dev/null); do
	case "$ns" in "$1"-*) ip netns del "$ns" ;; esac
done
rm -rf "$2"
`

func startReaper(id, dir string) (*reaper, error) {
	cmd := exec.Command("sh", "-c", reaperScript, "lab-reaper", id, dir)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("reaper: %w", err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start reaper: %w", err)
	}
	return &reaper{cmd: cmd, in: in}, nil
}

// done tells the reaper the lab was closed normally, and waits for it.
func (r *reaper) done() error {
	if r == nil {
		return nil
	}
	_, err := io.WriteString(r.in, "done\n")
	r.in.Close()
	if werr := r.cmd.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("reaper: %w", err)
	}
	return nil
}

// live holds the open labs, so that SIGINT/SIGTERM can close them before
// the process dies. The handler is installed only while a lab is open.
var live struct {
	sync.Mutex
	labs map[*Lab]bool
	stop chan struct{}
}

func register(l *Lab) {
	live.Lock()
	defer live.Unlock()
	if len(live.labs) == 0 {
		live.labs = map[*Lab]bool{}
		live.stop = make(chan struct{})
		go handleSignals(live.stop)
	}
	live.labs[l] = true
}

func unregister(l *Lab) {
	live.Lock()
	defer live.Unlock()
	if !live.labs[l] {
		return
	}
	delete(live.labs, l)
	if len(live.labs) == 0 {
		close(live.stop)
	}
}

func handleSignals(stop chan struct{}) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(c)
	var sig os.Signal
	select {
	case <-stop:
		return
	case sig = <-c:
	}
	live.Lock()
	var labs []*Lab
	for l := range live.labs {
		labs = append(labs, l)
	}
	live.Unlock()
	fmt.Fprintf(os.Stderr, "lab: %v: removing %d lab(s)\n", sig, len(labs))
	var wg sync.WaitGroup
	for _, l := range labs {
		wg.Go(func() {
			if err := l.close(false, stderrf); err != nil {
				stderrf("lab: close %s: %v", l.ID, err)
			}
		})
	}
	wg.Wait()
	// Die of the signal as if we had not caught it. If the signal was
	// ignored when we started (SIGINT in a background job), Reset restores
	// that and we are still here: exit as a shell reports a signal death.
	signal.Reset(sig)
	_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
	time.Sleep(100 * time.Millisecond)
	os.Exit(128 + int(sig.(syscall.Signal)))
}

func stderrf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
