package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// InNS runs f on an OS thread that has joined the network namespace at
// nsPath, then puts the thread back. Sockets that f creates stay in that
// namespace after InNS returns: this is how the lab dials and listens
// "inside" a host without a helper process. Only what f does synchronously
// counts; goroutines it starts run on other threads, in the root namespace.
func InNS(nsPath string, f func() error) error {
	target, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer target.Close()

	// A fresh goroutine, so the caller's thread is never touched.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", nsPath, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime then ends it with this
			// goroutine instead of reusing a thread in the wrong namespace.
			errc <- fmt.Errorf("return from netns %s: %w", nsPath, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialContext opens a connection from inside namespace ns. addr's host
// must be an IP address: a name lookup would run on another thread, in the
// root namespace.
func (l *Lab) DialContext(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	if ns == "" {
		return nil, fmt.Errorf("dial %s: no namespace given", addr)
	}
	if host, _, err := net.SplitHostPort(addr); err != nil || !isIP(host) {
		return nil, fmt.Errorf("dial %s from %s: want IP:port", addr, ns)
	}
	var conn net.Conn
	err := InNS(pathOf(ns), func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from %s: %w", network, addr, ns, err)
	}
	return conn, nil
}

// TCPConnect checks that a TCP connection from namespace fromNS to ip:port
// is accepted (within 2 s).
func (l *Lab) TCPConnect(fromNS, ip string, port int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := l.DialContext(ctx, fromNS, "tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return conn.Close()
}

// TCPSourceIP connects from fromNS to a ServeTCP server at ip:port and
// returns the source address the server saw: after NAT, the translated one.
func (l *Lab) TCPSourceIP(fromNS, ip string, port int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := l.DialContext(ctx, fromNS, "tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read greeting from %s:%d in %s: %w", ip, port, fromNS, err)
	}
	return strings.TrimSpace(line), nil
}

// Ping sends one ICMP echo (IPv4 or IPv6) from namespace fromNS and waits
// up to a second for the reply.
func (l *Lab) Ping(fromNS, ip string) error {
	_, err := l.Exec(fromNS, "ping", "-c1", "-W1", "-n", "-q", ip)
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w", ip, fromNS, err)
	}
	return nil
}

// Server is a TCP server started by ServeTCP. To every connection it first
// sends the client's address as a line, then echoes what it receives.
type Server struct {
	NS   string
	Port int

	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// ServeTCP starts a TCP server on port (all addresses, IPv4 and IPv6)
// inside namespace ns. It runs in the test process; Close stops it.
func (l *Lab) ServeTCP(ns string, port int) *Server {
	l.tb.Helper()
	s, err := l.serveTCP(ns, port)
	if err != nil {
		l.tb.Fatalf("lab: %v", err)
	}
	return s
}

func (l *Lab) serveTCP(ns string, port int) (*Server, error) {
	s := &Server{NS: ns, Port: port, conns: map[net.Conn]struct{}{}}
	err := InNS(pathOf(ns), func() error {
		var err error
		s.ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("serve tcp :%d in %s: %w", port, ns, err)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		s.ln.Close()
		return nil, fmt.Errorf("serve tcp :%d in %s: lab is closed", port, ns)
	}
	l.servers = append(l.servers, s)
	l.mu.Unlock()
	s.wg.Go(s.acceptLoop)
	return s, nil
}

func (s *Server) acceptLoop() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.conns == nil { // closed meanwhile
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			if _, err := fmt.Fprintf(c, "%s\n", host); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
		})
	}
}

// Close stops the server and drops its connections. The sockets hold their
// namespace alive, so the lab closes servers before deleting namespaces.
func (s *Server) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	s.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// writeSysctls sets sysctls (keys as paths under /proc/sys) inside a
// namespace. /proc/sys/net resolves to the namespace of the thread that
// opens it, so no sysctl process is needed.
func writeSysctls(nsPath string, kvs ...map[string]string) error {
	return InNS(nsPath, func() error {
		for _, kv := range kvs {
			for k, v := range kv {
				if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
					return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
				}
			}
		}
		return nil
	})
}

// delNS deletes a namespace's name; a namespace already gone is fine.
func delNS(name string) error {
	if _, err := os.Stat(pathOf(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := runCmd("ip", "netns", "del", name); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", name, err, out)
	}
	return nil
}

// killNSProcs SIGKILLs every process whose network namespace is ns and
// waits (up to 2 s) for them to go; it returns their PIDs.
func killNSProcs(ns string) []int {
	out, err := runCmd("ip", "netns", "pids", ns)
	if err != nil {
		return nil // namespace gone: nothing runs in it
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			pids = append(pids, pid)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for _, pid := range pids {
		// A killed child of ours stays a zombie until its Wait goroutine
		// reaps it; a zombie no longer holds its namespace, so stop there.
		for time.Now().Before(deadline) && alive(pid) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return pids
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(s[i+1:], " Z")
}

// isIP accepts IPv4 and IPv6 literals, with a zone ("fe80::1%eth0") too.
func isIP(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}
