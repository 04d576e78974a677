// Package natstest runs embedded NATS JetStream servers for tests: one
// node, or an in-process cluster whose nodes can be stopped and restarted.
// Only tests import it, so the NATS server never ends up in the Caddy
// binary (check with `go list -deps ./cmd/caddy`).
package natstest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/kezchat/kez/internal/testcaddy"
)

// Cluster is one or more JetStream servers on loopback.
type Cluster struct {
	Servers []*server.Server
	opts    []*server.Options
}

// Run starts a single-node JetStream server on a random loopback port,
// storing in a temp directory; it is shut down when the test ends.
func Run(t testing.TB) *Cluster { return RunCluster(t, 1) }

// RunOnPort is Run with a given client port (say, one a client is already
// trying to reach).
func RunOnPort(t testing.TB, port int) *Cluster { return runCluster(t, 1, port) }

// RunCluster starts n JetStream servers forming one cluster (n=1: no
// cluster), each with its own store directory, and waits until the
// cluster has a meta leader.
func RunCluster(t testing.TB, n int) *Cluster { return runCluster(t, n, 0) }

func runCluster(t testing.TB, n, port int) *Cluster {
	t.Helper()
	dir := t.TempDir()
	// A route port is picked before any node listens (every node's routes
	// name all of them), so another test may take one meanwhile; then the
	// node never gets ready, and the cluster is started over on new ports.
	for attempt := 1; ; attempt++ {
		c, err := tryCluster(t, n, port, filepath.Join(dir, fmt.Sprint(attempt)))
		if err == nil {
			t.Cleanup(c.Shutdown)
			c.WaitMetaLeader(t, 20*time.Second)
			return c
		}
		if attempt == 3 {
			t.Fatal(err)
		}
		t.Logf("starting NATS again: %v", err)
	}
}

func tryCluster(t testing.TB, n, port int, dir string) (*Cluster, error) {
	c := &Cluster{Servers: make([]*server.Server, n), opts: make([]*server.Options, n)}
	routePorts := testcaddy.FreePorts(t, n)
	for i := range n {
		o := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT, // kept after the first start: a restarted node keeps its URL
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			NoLog:      os.Getenv("KEZ_NATS_LOG") == "",
			NoSigs:     true,
		}
		if n > 1 {
			o.Cluster = server.ClusterOpts{Name: "kez-test", Host: "127.0.0.1", Port: routePorts[i]}
			for j, p := range routePorts {
				if j != i {
					o.Routes = append(o.Routes, server.RoutesFromStr(fmt.Sprintf("nats://127.0.0.1:%d", p))...)
				}
			}
		}
		if port != 0 {
			o.Port = port
		}
		c.opts[i] = o
	}
	for i := range n {
		if err := c.startNode(i); err != nil {
			c.Shutdown()
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) start(t testing.TB, i int) {
	t.Helper()
	if err := c.startNode(i); err != nil {
		t.Fatal(err)
	}
}

func (c *Cluster) startNode(i int) error {
	o := *c.opts[i]
	s, err := server.NewServer(&o)
	if err != nil {
		return fmt.Errorf("nats server %d: %v", i+1, err)
	}
	if os.Getenv("KEZ_NATS_LOG") != "" {
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return fmt.Errorf("nats server %d not ready after 10 s (a port taken? KEZ_NATS_LOG=1 shows why)", i+1)
	}
	c.Servers[i] = s
	if addr, ok := s.Addr().(*net.TCPAddr); ok {
		c.opts[i].Port = addr.Port
	}
	return nil
}

// URL is the client URL of node i.
func (c *Cluster) URL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.opts[i].Port)
}

// URLs are the client URLs of every node.
func (c *Cluster) URLs() []string {
	urls := make([]string, len(c.opts))
	for i := range c.opts {
		urls[i] = c.URL(i)
	}
	return urls
}

// URLList is URLs joined with spaces, as the Caddyfile takes them.
func (c *Cluster) URLList() string { return strings.Join(c.URLs(), " ") }

// Stop shuts node i down (its data stays for Restart).
func (c *Cluster) Stop(i int) {
	if s := c.Servers[i]; s != nil {
		s.Shutdown()
		s.WaitForShutdown()
		c.Servers[i] = nil
	}
}

// Restart starts node i again with its data and ports.
func (c *Cluster) Restart(t testing.TB, i int) {
	t.Helper()
	c.Stop(i)
	c.start(t, i)
}

// Shutdown stops every node.
func (c *Cluster) Shutdown() {
	for i := range c.Servers {
		c.Stop(i)
	}
}

// StreamLeader is the index of the node leading stream (global account),
// or -1 when none does right now.
func (c *Cluster) StreamLeader(stream string) int {
	if len(c.Servers) == 1 {
		if c.Servers[0] != nil {
			return 0
		}
		return -1
	}
	for i, s := range c.Servers {
		if s != nil && s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// WaitMetaLeader waits until a running node is the JetStream meta leader
// and knows every running node as a peer, so that replicated streams can
// be placed.
func (c *Cluster) WaitMetaLeader(t testing.TB, within time.Duration) {
	t.Helper()
	if len(c.Servers) == 1 {
		return
	}
	running := 0
	for _, s := range c.Servers {
		if s != nil {
			running++
		}
	}
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, s := range c.Servers {
			if s != nil && s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) >= running {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no JetStream meta leader after %s", within)
}

// Procs is a cluster of nats-server processes, built from this module's
// nats-server dependency, for tests that need a real crash (SIGKILL: no
// leader step-down, no flush) rather than an in-process shutdown. Each
// node fsyncs every write (sync_interval: always), as the README advises.
type Procs struct {
	bin   string
	dir   string
	ports []int // client ports
	mon   []int // monitoring ports
	cmds  []*exec.Cmd
	exit  []chan struct{}
}

// RunProcesses starts an n-node cluster of nats-server processes; they are
// killed when the test ends.
func RunProcesses(t testing.TB, n int) *Procs {
	t.Helper()
	p := &Procs{bin: testcaddy.Build(t, "github.com/nats-io/nats-server/v2"), dir: t.TempDir(),
		cmds: make([]*exec.Cmd, n), exit: make([]chan struct{}, n)}
	routes := make([]string, n)
	cluster := make([]int, n)
	ports := testcaddy.FreePorts(t, 3*n) // distinct, all of them
	for i := range n {
		p.ports = append(p.ports, ports[3*i])
		p.mon = append(p.mon, ports[3*i+1])
		cluster[i] = ports[3*i+2]
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", cluster[i])
	}
	for i := range n {
		conf := fmt.Sprintf(`server_name: n%d
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
jetstream {
    store_dir: %q
    sync_interval: always
}
cluster {
    name: kez-test
    listen: 127.0.0.1:%d
    routes: [%s]
}
`, i+1, p.ports[i], p.mon[i], filepath.Join(p.dir, fmt.Sprintf("n%d", i+1)), cluster[i], strings.Join(routes, ", "))
		if err := os.WriteFile(p.conf(i), []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i := range p.cmds {
			p.Kill(i)
		}
	})
	for i := range n {
		p.Start(t, i)
	}
	p.waitMeta(t, 30*time.Second)
	return p
}

func (p *Procs) conf(i int) string { return filepath.Join(p.dir, fmt.Sprintf("n%d.conf", i+1)) }

// Start (re)starts node i with its data and ports.
func (p *Procs) Start(t testing.TB, i int) {
	t.Helper()
	cmd := exec.Command(p.bin, "-c", p.conf(i))
	if os.Getenv("KEZ_NATS_LOG") != "" {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exit := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exit) }()
	p.cmds[i], p.exit[i] = cmd, exit
	deadline := time.Now().Add(20 * time.Second)
	for {
		if res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz?js-server-only=true", p.mon[i])); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server %d not healthy", i+1)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill ends node i with SIGKILL, as a crash or a power cut of that node.
func (p *Procs) Kill(i int) {
	if p.cmds[i] == nil {
		return
	}
	_ = p.cmds[i].Process.Signal(syscall.SIGKILL)
	<-p.exit[i]
	p.cmds[i] = nil
}

// URLs are the client URLs of every node.
func (p *Procs) URLs() []string {
	urls := make([]string, len(p.ports))
	for i, port := range p.ports {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", port)
	}
	return urls
}

// StreamLeader asks the running nodes' monitoring which node leads stream,
// or -1.
func (p *Procs) StreamLeader(stream string) int {
	for i := range p.cmds {
		if p.cmds[i] == nil {
			continue
		}
		res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz?streams=true", p.mon[i]))
		if err != nil {
			continue
		}
		var jsz struct {
			Accounts []struct {
				Streams []struct {
					Name    string `json:"name"`
					Cluster struct {
						Leader string `json:"leader"`
					} `json:"cluster"`
				} `json:"stream_detail"`
			} `json:"account_details"`
		}
		err = json.NewDecoder(res.Body).Decode(&jsz)
		res.Body.Close()
		if err != nil {
			continue
		}
		for _, a := range jsz.Accounts {
			for _, s := range a.Streams {
				if s.Name == stream && s.Cluster.Leader != "" {
					var n int
					if _, err := fmt.Sscanf(s.Cluster.Leader, "n%d", &n); err == nil && p.cmds[n-1] != nil {
						return n - 1
					}
				}
			}
		}
	}
	return -1
}

// waitMeta waits until a node reports a meta leader and all peers.
func (p *Procs) waitMeta(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", p.mon[0]))
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("cluster not healthy after %s", within)
}
