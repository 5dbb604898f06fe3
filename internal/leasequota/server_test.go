package leasequota_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// server is a redis-server the tests started on a loopback port, without
// persistence, shared by the package's tests; TestMain stops it.
var server struct {
	once sync.Once
	addr string
	cmd  *exec.Cmd
	dir  string
	err  error
}

func startServer() (string, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return "", fmt.Errorf("redis-server is not on PATH (apt-get install redis-server): %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	server.dir, err = os.MkdirTemp("", "leasequota-")
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	server.cmd = exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", server.dir, "--loglevel", "warning")
	if err := server.cmd.Start(); err != nil {
		return "", fmt.Errorf("start redis-server: %w", err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			continue
		}
		fmt.Fprint(c, "PING\r\n")
		c.SetReadDeadline(time.Now().Add(time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err == nil && strings.HasPrefix(line, "+PONG") {
			return addr, nil
		}
	}
	return "", fmt.Errorf("redis-server on %s did not answer PING", addr)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if server.cmd != nil && server.cmd.Process != nil {
		server.cmd.Process.Kill()
		server.cmd.Wait()
	}
	if server.dir != "" {
		os.RemoveAll(server.dir)
	}
	os.Exit(code)
}

// newClient returns a client of the shared server, closed when the test
// ends.
func newClient(t testing.TB) *redis.Client {
	t.Helper()
	server.once.Do(func() { server.addr, server.err = startServer() })
	if server.err != nil {
		t.Fatalf("redis-server: %v", server.err)
	}
	c := redis.NewClient(&redis.Options{Addr: server.addr, ContextTimeoutEnabled: true, PoolSize: 32})
	t.Cleanup(func() { c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
	return c
}
