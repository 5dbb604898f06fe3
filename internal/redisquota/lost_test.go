package redisquota_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/redisquota"
)

// proxy is a TCP proxy in front of a redis-server that injects faults: it
// can delay every reply (a stall), or lose replies (dropReplies: replies on
// open connections are discarded and new connections reach nothing), and it
// keeps what clients sent so that a test can send it again late.
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	stallUntil atomic.Int64 // Unix ns; replies wait until then
	drop       atomic.Bool

	mu   sync.Mutex
	sent [][]byte // per connection, what the client sent
	wg   sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// stall delays every reply until d from now.
func (p *proxy) stall(d time.Duration) { p.stallUntil.Store(time.Now().Add(d).UnixNano()) }

func (p *proxy) accept() {
	defer p.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.drop.Load() {
			// A black hole: reads and discards, answers nothing.
			conns.Go(func() { io.Copy(io.Discard, c); c.Close() })
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		i := len(p.sent)
		p.sent = append(p.sent, nil)
		p.mu.Unlock()
		conns.Go(func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					p.mu.Lock()
					p.sent[i] = append(p.sent[i], buf[:n]...)
					p.mu.Unlock()
					if _, werr := s.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			s.Close()
		})
		conns.Go(func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 && !p.drop.Load() {
					if d := time.Until(time.Unix(0, p.stallUntil.Load())); d > 0 {
						time.Sleep(d)
					}
					if _, werr := c.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			c.Close()
		})
	}
}

// commands returns every command clients sent through the proxy, each as
// its raw RESP bytes and its arguments.
func (p *proxy) commands() (raw [][]byte, args [][]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, stream := range p.sent {
		off := 0
		for off < len(stream) {
			a, n, err := parseCommand(stream[off:])
			if err != nil {
				break
			}
			raw = append(raw, stream[off:off+n])
			args = append(args, a)
			off += n
		}
	}
	return raw, args
}

// parseCommand parses one RESP array of bulk strings at the start of b and
// returns its elements and length.
func parseCommand(b []byte) ([]string, int, error) {
	bad := errors.New("not a complete command")
	line := func(off int) (string, int, error) {
		i := bytes.Index(b[off:], []byte("\r\n"))
		if i < 0 {
			return "", 0, bad
		}
		return string(b[off : off+i]), off + i + 2, nil
	}
	head, off, err := line(0)
	if err != nil || !strings.HasPrefix(head, "*") {
		return nil, 0, bad
	}
	n, err := strconv.Atoi(head[1:])
	if err != nil {
		return nil, 0, bad
	}
	out := make([]string, 0, n)
	for range n {
		var h string
		if h, off, err = line(off); err != nil || !strings.HasPrefix(h, "$") {
			return nil, 0, bad
		}
		l, err := strconv.Atoi(h[1:])
		if err != nil || off+l+2 > len(b) {
			return nil, 0, bad
		}
		out = append(out, string(b[off:off+l]))
		off += l + 2
	}
	return out, off, nil
}

// TestLostAcquireIsVoided: an acquire that Redis carries out but whose reply
// is lost leaves nothing behind once the voider has reached Redis again:
// no slot, no reservation. The same acquire arriving late is refused.
func TestLostAcquireIsVoided(t *testing.T) {
	srv := sharedServer(t)
	px := newProxy(t, srv.addr)
	c := redis.NewClient(&redis.Options{Addr: px.addr(), ContextTimeoutEnabled: true, MaxRetries: -1, PoolSize: 4})
	t.Cleanup(func() { c.Close() })
	b, prefix := newBackend(t, c, redisquota.Options{Timeout: 300 * time.Millisecond, Retries: -1})
	observer, _ := newBackend(t, newClient(t, srv.addr), redisquota.Options{Prefix: prefix})
	ctx := context.Background()
	zone := noonZone(t)
	chain := []quota.Scope{{Key: "u", Loc: zone, Limits: &quota.Limits{TokensDay: quota.AtMost(1000), Concurrency: quota.AtMost(5)}}}
	req := quota.Request{Chain: chain, Ask: quota.Ask{Requests: 1, Tokens: 100, Concurrency: true}, TTL: time.Hour}

	// Warm up: the scripts are loaded, so that the lost EVALSHA runs.
	tk, err := b.Acquire(ctx, req)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if _, err := b.Settle(ctx, tk.ID, quota.Usage{}); err != nil {
		t.Fatalf("Settle: %v", err)
	}

	px.drop.Store(true)
	if _, err := b.Acquire(ctx, req); !errors.Is(err, quota.ErrUnavailable) {
		t.Fatalf("Acquire with its reply lost: got %v, want ErrUnavailable", err)
	}
	// Redis granted it: a slot and 100 tokens are held for nobody.
	u := useOf(t, observer, "u")
	if u.Concurrency != 1 || u.TokensDay.Used != 100 {
		t.Fatalf("after the lost acquire: got %d in flight and %d tokens, want 1 and 100 (the acquire ran)", u.Concurrency, u.TokensDay.Used)
	}
	if b.PendingVoids() != 1 {
		t.Fatalf("pending voids: got %d, want 1", b.PendingVoids())
	}

	px.drop.Store(false)
	waitFor(t, time.Minute, "the lost acquire voided", func() bool { return b.PendingVoids() == 0 })
	u = useOf(t, observer, "u")
	if u.Concurrency != 0 || u.TokensDay.Used != 0 {
		t.Fatalf("after the void: got %d in flight and %d tokens, want 0 and 0", u.Concurrency, u.TokensDay.Used)
	}

	// The same acquire, sent again as Redis would see it arriving late.
	raw, args := px.commands()
	var late []byte
	for i, a := range args {
		if len(a) > 3 && strings.EqualFold(a[0], "evalsha") && slicesContainPrefix(a, "{"+prefix+"}:s:u") {
			late = raw[i]
		}
	}
	if late == nil {
		t.Fatal("no acquire went through the proxy")
	}
	conn, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	if _, err := conn.Write(late); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	var reply []string
	for range 4 { // *3, then the code and now's two parts
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the late acquire's reply: %v", err)
		}
		reply = append(reply, strings.TrimSpace(l))
	}
	if reply[0] != "*3" || reply[1] != ":-8" {
		t.Fatalf("late acquire: got reply %q, want a refusal (*3, :-8, …)", reply)
	}
	u = useOf(t, observer, "u")
	if u.Concurrency != 0 || u.TokensDay.Used != 0 {
		t.Fatalf("after the late acquire: got %d in flight and %d tokens, want 0 and 0", u.Concurrency, u.TokensDay.Used)
	}
}

func slicesContainPrefix(a []string, p string) bool {
	for _, s := range a {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// TestLatencySpikesDoNotFlap: replies delayed past the call timeout, in
// spikes each shorter than TripAfter consecutive failures, fail the calls
// caught in them (ErrUnavailable) but never switch the Failover's mode,
// however many calls fail together in one spike. A Redis that stops
// answering altogether still switches it.
func TestLatencySpikesDoNotFlap(t *testing.T) {
	srv := sharedServer(t)
	px := newProxy(t, srv.addr)
	c := redis.NewClient(&redis.Options{Addr: px.addr(), ContextTimeoutEnabled: true, MaxRetries: -1, PoolSize: 32,
		DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
	t.Cleanup(func() { c.Close() })
	b, _ := newBackend(t, c, redisquota.Options{Timeout: 100 * time.Millisecond, Retries: -1})
	var mu sync.Mutex
	var modes []string
	f := quota.NewFailover(b, quota.FailoverOptions{
		Probe:         func(ctx context.Context) error { return c.Ping(ctx).Err() },
		ProbeTimeout:  10 * time.Second,
		ProbeInterval: 20 * time.Millisecond,
		TripAfter:     3,
		OnMode: func(m string) {
			mu.Lock()
			modes = append(modes, m)
			mu.Unlock()
		},
	})
	t.Cleanup(func() { f.Close() })
	ctx := context.Background()
	chain := []quota.Scope{{Key: "g", Limits: &quota.Limits{Concurrency: quota.AtMost(1000)}}}
	call := func() error {
		tk, err := f.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Requests: 1, Concurrency: true}})
		if err != nil {
			return err
		}
		_, err = f.Settle(ctx, tk.ID, quota.Usage{})
		return err
	}
	if err := call(); err != nil {
		t.Fatalf("healthy: %v", err)
	}
	var failed int
	for spike := range 10 {
		// 250 ms of delayed replies: calls of 100 ms caught in it time out;
		// a lone caller sees at most two in a row.
		px.stall(250 * time.Millisecond)
		var wg sync.WaitGroup
		var errsN atomic.Int64
		for range 8 {
			wg.Go(func() {
				if err := call(); err != nil {
					if !errors.Is(err, quota.ErrUnavailable) {
						t.Errorf("spike %d: got %v, want ErrUnavailable or success", spike, err)
					}
					errsN.Add(1)
				}
			})
		}
		wg.Wait()
		failed += int(errsN.Load())
		// After the spike, a call succeeds: the count starts over.
		waitFor(t, time.Minute, "a call succeeding after the spike", func() bool { return call() == nil })
	}
	mu.Lock()
	got := append([]string(nil), modes...)
	mu.Unlock()
	if len(got) != 0 || f.Degraded() {
		t.Fatalf("mode transitions under latency spikes: got %v (degraded %v), want none", got, f.Degraded())
	}
	if failed == 0 {
		t.Fatal("no call failed in any spike: the test injected nothing")
	}
	t.Logf("%d calls failed in 10 spikes, no mode change", failed)

	// Control: Redis answers nothing at all (replies lost, new connections
	// black-holed). The probe fails, or the failures add up: degraded.
	px.drop.Store(true)
	waitFor(t, time.Minute, "degraded once Redis answers nothing", func() bool {
		call()
		return f.Degraded()
	})
	px.drop.Store(false)
	waitFor(t, time.Minute, "normal again", func() bool { return !f.Degraded() })
}

// TestLostAcquireVoidedBeforeItsRetry: an acquire that Redis carried out
// but whose reply was lost is voided before it is tried again, so the
// retry does not meet the lost acquire's own slot: at a concurrency limit
// of one the caller is admitted once, and one slot is held.
func TestLostAcquireVoidedBeforeItsRetry(t *testing.T) {
	srv := sharedServer(t)
	px := newProxy(t, srv.addr)
	c := redis.NewClient(&redis.Options{Addr: px.addr(), ContextTimeoutEnabled: true, MaxRetries: -1, PoolSize: 4})
	t.Cleanup(func() { c.Close() })
	b, prefix := newBackend(t, c, redisquota.Options{Timeout: 2 * time.Second, Retries: 1})
	observer, _ := newBackend(t, newClient(t, srv.addr), redisquota.Options{Prefix: prefix, Timeout: loadedTimeout})
	ctx := context.Background()
	chain := []quota.Scope{{Key: "one", Limits: &quota.Limits{Concurrency: quota.AtMost(1)}}}
	req := quota.Request{Chain: chain, Ask: quota.Ask{Requests: 1, Concurrency: true}, TTL: time.Hour}
	// Warm up: the scripts are loaded, so that the lost EVALSHA runs.
	tk, err := b.Acquire(ctx, req)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if _, err := b.Settle(ctx, tk.ID, quota.Usage{}); err != nil {
		t.Fatalf("Settle: %v", err)
	}

	px.drop.Store(true)
	done := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctx, req)
		done <- err
	}()
	// Once Redis has carried the acquire out (its reply being dropped),
	// Redis answers again: the timeout declares the reply lost, and the
	// retry follows.
	waitFor(t, time.Minute, "the acquire carried out", func() bool { return useOf(t, observer, "one").Concurrency == 1 })
	px.drop.Store(false)
	if err := <-done; err != nil {
		t.Fatalf("Acquire whose first reply was lost: %v, want admitted by its retry", err)
	}
	if u := useOf(t, observer, "one"); u.Concurrency != 1 {
		t.Errorf("slots held: %d, want 1 (the retry's; the lost one voided)", u.Concurrency)
	}
	if n := b.PendingVoids(); n != 0 {
		t.Errorf("pending voids: %d, want 0 (voided before the retry)", n)
	}
}
