// Package sim puts the etcd load of many hosts on etcd without running
// them: a simulated host does the reads and opens the watches a tabby-node
// on that host opens (node/agent's base prefixes plus the tag prefixes its
// local rules name, node/watch's Get-then-Watch-from-revision), and counts
// what it receives instead of programming a kernel. It also drives the
// cluster's write load: endpoint churn (ADD and DEL transactions shaped
// as the CNI plugin's), profile edits and hosts leaving and joining.
//
// Connections: the hosts share a few clientv3 clients (Config.Conns), but
// each host's watches travel on a gRPC watch stream of its own, as a real
// node's do, so etcd (or the gRPC proxy) sees one watch stream per host
// without ten thousand TCP connections.
package sim

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/tabby-net/tabby/node/agent"
	"github.com/tabby-net/tabby/node/watch"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/test/scale/load"
)

// NodePrefixes are what a tabby-node on host follows, given the namespaces
// (profiles k8s_ns.<ns>) of its workloads: node/agent's own list for the
// profiles its endpoints name, one key each, and the tags their rules name
// (a namespace's profile names its own tag). The loaded cluster has no
// policies, so no member prefix is followed (policy.MemberScope is empty).
func NodePrefixes(host string, namespaces []string) []string {
	profiles := make([]string, 0, len(namespaces))
	for _, ns := range namespaces {
		profiles = append(profiles, model.K8sNamespaceProfile(ns))
	}
	return agent.Followed(host, profiles, profiles, nil)
}

// Config of a set of simulated hosts.
type Config struct {
	Endpoints []string // etcd, or gRPC proxies (hosts are spread over them)
	Conns     int      // clients (TCP connections) per endpoint; default 8
	// Dialer, when set, makes the connections (the lab dials inside a
	// network namespace).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// CountOnlyFrom > 0: hosts from this index on read the prefixes that
	// many hosts share (host list, profiles, tags, ...) count-only at join
	// (same request count and revision, no values). A tabby-node reads
	// them whole; ten thousand hosts doing so take tens of minutes on a
	// 2-core machine, so the harness reads whole for the first hosts only
	// and reports that cost per host (a cold-start storm's), while the
	// watches, the load it measures, are the same for every host.
	CountOnlyFrom int
}

// Hosts is a growing set of simulated hosts.
type Hosts struct {
	cl      *load.Cluster
	clients []*clientv3.Client
	cfg     Config

	mu      sync.Mutex
	joined  int
	cancels []context.CancelFunc
	wg      sync.WaitGroup

	events   atomic.Int64 // watch events received, all hosts
	watchers atomic.Int64 // watches open
	gets     atomic.Int64
	getBytes atomic.Int64
	lost     atomic.Int64 // watches that ended with an error (compaction, ...)
}

// New connects the clients; Join adds hosts.
func New(cl *load.Cluster, cfg Config) (*Hosts, error) {
	if cfg.Conns == 0 {
		cfg.Conns = 8
	}
	h := &Hosts{cl: cl, cfg: cfg}
	for _, ep := range cfg.Endpoints {
		for i := 0; i < cfg.Conns; i++ {
			cc := clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
				MaxCallRecvMsgSize: 1 << 30}
			if cfg.Dialer != nil {
				cc.DialOptions = []grpc.DialOption{grpc.WithContextDialer(cfg.Dialer)}
			}
			c, err := clientv3.New(cc)
			if err != nil {
				h.Close()
				return nil, fmt.Errorf("sim: client of %s: %w", ep, err)
			}
			h.clients = append(h.clients, c)
		}
	}
	if len(h.clients) == 0 {
		return nil, fmt.Errorf("sim: no endpoints")
	}
	return h, nil
}

// Joined is how many hosts have joined.
func (s *Hosts) Joined() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.joined
}

// Counters is a snapshot of what the hosts did.
type Counters struct {
	Events   int64 `json:"events"`
	Watchers int64 `json:"watchers"`
	Gets     int64 `json:"gets"`
	GetBytes int64 `json:"get_bytes"`
	Lost     int64 `json:"lost"`
}

// Counters reads the counters.
func (s *Hosts) Counters() Counters {
	return Counters{Events: s.events.Load(), Watchers: s.watchers.Load(), Gets: s.gets.Load(), GetBytes: s.getBytes.Load(), Lost: s.lost.Load()}
}

// Join starts hosts until n have joined, at most par of them reading at
// once; it returns once every new host has read its prefixes and has its
// watches open (etcd has answered each watch's creation).
func (s *Hosts) Join(ctx context.Context, n, par int) error {
	s.mu.Lock()
	from := s.joined
	s.mu.Unlock()
	if n <= from {
		return nil
	}
	if par <= 0 {
		par = 16
	}
	sem := make(chan struct{}, par)
	errc := make(chan error, n-from)
	var wg sync.WaitGroup
	for i := from; i < n; i++ {
		sem <- struct{}{}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := s.start(ctx, i); err != nil {
				errc <- err
			}
		}(i)
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	s.mu.Lock()
	s.joined = max(s.joined, n)
	s.mu.Unlock()
	return ctx.Err()
}

// start runs host i: one Get per prefix, then a watch from that Get's
// revision for each, all on one gRPC watch stream of the host's own, as
// clientv3 opens for a tabby-node. The stream is read raw (one goroutine
// per host counting what it receives) rather than through clientv3's
// per-watch goroutines and channels: what etcd sends is the same, and the
// simulator, which shares the machine with etcd, costs a fraction of the
// CPU per event that ten thousand real nodes would spend elsewhere.
func (s *Hosts) start(ctx context.Context, i int) error {
	name := s.cl.Host(i)
	cli := s.clients[i%len(s.clients)]
	countOnly := s.cfg.CountOnlyFrom > 0 && i >= s.cfg.CountOnlyFrom
	prefixes := NodePrefixes(name, s.cl.HostNamespaces(i))
	creates := make([]*pb.WatchCreateRequest, 0, len(prefixes))
	for _, p := range prefixes {
		gctx, gcancel := context.WithTimeout(ctx, 60*time.Second)
		// A name that does not end in "/" is one key (node/watch).
		wc := &pb.WatchCreateRequest{Key: []byte(p)}
		var opts []clientv3.OpOption
		if !watch.SingleKey(p) {
			opts = append(opts, clientv3.WithPrefix())
			wc.RangeEnd = []byte(clientv3.GetPrefixRangeEnd(p))
		}
		if countOnly && !strings.Contains(p, "/"+name+"/") {
			opts = append(opts, clientv3.WithCountOnly())
		}
		r, err := cli.Get(gctx, p, opts...)
		gcancel()
		if err != nil {
			return fmt.Errorf("sim host %s: get %s: %w", name, p, err)
		}
		s.gets.Add(1)
		var b int64
		for _, kv := range r.Kvs {
			b += int64(len(kv.Key) + len(kv.Value))
		}
		s.getBytes.Add(b)
		wc.StartRevision = r.Header.Revision + 1
		creates = append(creates, wc)
	}
	hctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	s.cancels = append(s.cancels, cancel)
	s.mu.Unlock()
	// WithRequireLeader as node/watch does.
	stream, err := pb.NewWatchClient(cli.ActiveConnection()).Watch(clientv3.WithRequireLeader(hctx))
	if err != nil {
		return fmt.Errorf("sim host %s: watch stream: %w", name, err)
	}
	for _, wc := range creates {
		if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: wc}}); err != nil {
			return fmt.Errorf("sim host %s: watch %s: %w", name, wc.Key, err)
		}
	}
	// Wait for every created notice, so that a caller that writes after
	// Join knows every watch sees the write.
	created := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		open := 0
		defer func() { s.watchers.Add(-int64(open)) }()
		for {
			resp, err := stream.Recv()
			if err != nil {
				if open < len(creates) {
					created <- fmt.Errorf("watches not created: %w", err)
				} else if hctx.Err() == nil {
					s.lost.Add(int64(open))
				}
				return
			}
			switch {
			case resp.Created && !resp.Canceled:
				open++
				s.watchers.Add(1)
				if open == len(creates) {
					created <- nil
				}
			case resp.Canceled:
				if open < len(creates) {
					created <- fmt.Errorf("watch %d canceled at creation: %s", resp.WatchId, resp.CancelReason)
					return
				}
				open--
				s.watchers.Add(-1)
				s.lost.Add(1)
			default:
				s.events.Add(int64(len(resp.Events)))
			}
		}
	}()
	select {
	case err := <-created:
		if err != nil {
			return fmt.Errorf("sim host %s: %w", name, err)
		}
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(60 * time.Second):
		return fmt.Errorf("sim host %s: watches not created after 60s", name)
	}
	return nil
}

// Close ends every host's watches and the clients.
func (s *Hosts) Close() {
	s.mu.Lock()
	for _, c := range s.cancels {
		c()
	}
	s.cancels = nil
	s.joined = 0
	s.mu.Unlock()
	s.wg.Wait()
	for _, c := range s.clients {
		c.Close()
	}
	s.clients = nil
}
