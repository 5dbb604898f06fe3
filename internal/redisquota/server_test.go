package redisquota_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// server is a redis-server the tests started on a loopback port.
type server struct {
	addr string
	port int
	dir  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

// startServer starts a redis-server (from PATH) on a free loopback port in
// a temporary directory, without persistence. extra are more arguments.
func startServer(dir string, extra ...string) (*server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server is not on PATH (install it, e.g. apt-get install redis-server): %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &server{addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: dir}
	s.args = append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--loglevel", "warning"}, extra...)
	_ = bin
	return s, s.start()
}

func (s *server) start() error {
	s.cmd = exec.Command("redis-server", s.args...)
	s.cmd.Dir = s.dir
	logf, err := os.Create(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return err
	}
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start redis-server: %w", err)
	}
	s.done = make(chan struct{})
	go func() {
		s.cmd.Wait()
		logf.Close()
		close(s.done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", s.addr, 100*time.Millisecond)
		if err == nil {
			w := bufio.NewReader(c)
			fmt.Fprint(c, "PING\r\n")
			c.SetReadDeadline(time.Now().Add(time.Second))
			line, err := w.ReadString('\n')
			c.Close()
			if err == nil && strings.HasPrefix(line, "+PONG") {
				return nil
			}
		}
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("redis-server exited: %s", log)
		case <-time.After(20 * time.Millisecond):
		}
	}
	s.kill()
	return fmt.Errorf("redis-server on %s did not answer PING", s.addr)
}

// kill stops the server at once (SIGKILL) and waits for it.
func (s *server) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		<-s.done
	}
}

// restart starts the server again on the same port.
func (s *server) restart() error { return s.start() }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// extraServers are stopped (and their directories removed) by TestMain.
var extraServers []*server

var shared struct {
	once sync.Once
	srv  *server
	dir  string
	err  error
}

// sharedServer returns the package's redis-server, starting it on first
// use; TestMain stops it. Tests that use it must not kill it.
func sharedServer(t testing.TB) *server {
	t.Helper()
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "redisquota-")
		if shared.err == nil {
			shared.srv, shared.err = startServer(shared.dir)
		}
	})
	if shared.err != nil {
		t.Fatalf("shared redis-server: %v", shared.err)
	}
	return shared.srv
}

// dedicatedServer starts a redis-server for one test, which may kill it.
func dedicatedServer(t testing.TB, extra ...string) *server {
	t.Helper()
	s, err := startServer(t.TempDir(), extra...)
	if err != nil {
		t.Fatalf("redis-server: %v", err)
	}
	t.Cleanup(s.kill)
	return s
}

// quietLog drops go-redis's log lines: the tests that kill Redis would
// fill the output with failed dials they expect.
type quietLog struct{}

func (quietLog) Printf(context.Context, string, ...any) {}

// TestMain runs the package in -short mode unless -short was given
// explicitly or REDISQUOTA_FULL=1: quotatest's property test then makes
// 600 steps per seed instead of 3,000. At 3,000 it makes about 385,000
// sequential round trips (it reads every scope after every step), which
// on a loaded 2-core machine takes 60 to 90 s, over the package's budget.
func TestMain(m *testing.M) {
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.short" })
	if !explicit && os.Getenv("REDISQUOTA_FULL") != "1" {
		flag.Set("test.short", "true")
	}
	redis.SetLogger(quietLog{})
	code := m.Run()
	if shared.srv != nil {
		shared.srv.kill()
	}
	for _, s := range extraServers {
		s.kill()
		if s.cmd == nil && s.dir != "" {
			os.RemoveAll(s.dir)
		}
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// newClient returns a client for addr, closed when the test ends.
func newClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		DialTimeout:           time.Second,
		PoolSize:              64,
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// flush empties the shared server.
func flush(t testing.TB, c *redis.Client) {
	t.Helper()
	if err := c.FlushAll(context.Background()).Err(); err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
}

// stop and cont pause and resume the server (SIGSTOP, SIGCONT).
func (s *server) stop() { s.cmd.Process.Signal(syscall.SIGSTOP) }
func (s *server) cont() { s.cmd.Process.Signal(syscall.SIGCONT) }
