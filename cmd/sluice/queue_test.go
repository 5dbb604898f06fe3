package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/sluicehq/sluice/internal/config"
)

// startQueued is startGateway with the admission queue on.
func startQueued(t *testing.T, up *upstream, policy string, maxWait time.Duration) *gwApp {
	t.Helper()
	cfg := testConfig(t)
	cfg.AdminKey = gwAdmin
	cfg.Admission = config.Default().Admission
	cfg.Admission.MaxWait = config.Duration(maxWait)
	cfg.Admission.PollInterval = config.Duration(50 * time.Millisecond)
	cfg.Models = append(cfg.Models, up.model("gpt-4o-mini"))
	s := start(t, cfg)
	a := applyPolicy(t, s.url, gwAdmin, policy)
	client := openai.NewClient(option.WithBaseURL(s.url+"/v1/"), option.WithAPIKey(a.key), option.WithMaxRetries(0))
	return &gwApp{s: s, alice: a, client: client}
}

// metricValue reads one sample of url's /metrics (0 when absent).
func metricValue(t *testing.T, url, sample string) float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return 0
}

const queuePolicy = `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {tokens: 100000/day, concurrency: 1}}
`

// holdStream makes up answer the next call with a stream that stays open
// until release is closed or the client leaves.
func holdStream(up *upstream, release <-chan struct{}) {
	up.setAnswer(func(w http.ResponseWriter, r *http.Request, c upCall) {
		s := newSSE(w, c)
		s.delta(map[string]any{"role": "assistant", "content": "", "refusal": nil}, nil)
		s.delta(map[string]any{"content": "Hello"}, nil)
		select {
		case <-release:
			s.delta(map[string]any{}, "stop")
			s.done()
		case <-r.Context().Done():
		}
	})
}

// queues reads alice's queue states from /api/v1/usage.
func (g *gwApp) queues(t *testing.T) []any {
	t.Helper()
	code, body := call(t, "GET", g.s.url+"/api/v1/usage", g.alice.key, "")
	if code != 200 {
		t.Fatalf("usage: %d %v", code, body)
	}
	q, ok := body["queues"].([]any)
	if !ok {
		t.Fatalf("usage has no queues: %v", body)
	}
	return q
}

// TestGatewayQueuesForASlot: with the admission queue on, a call that
// finds alice's one slot taken waits for it instead of a 429: /api/v1/usage
// shows it waiting, it is answered once the first call ends, and its
// response says how long it waited.
func TestGatewayQueuesForASlot(t *testing.T) {
	up := newUpstream(t)
	g := startQueued(t, up, queuePolicy, 20*time.Second)
	release := make(chan struct{})
	holdStream(up, release)
	s := g.client.Chat.Completions.NewStreaming(context.Background(), chatParams("gpt-4o-mini"))
	if !s.Next() {
		t.Fatalf("first chunk: %v", s.Err())
	}
	up.setAnswer(nil)
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var raw *http.Response
		_, err := g.client.Chat.Completions.New(context.Background(), chatParams("gpt-4o-mini"), option.WithResponseInto(&raw))
		done <- result{raw, err}
	}()
	waitFor(t, "the second call waiting in alice's queue", func() (bool, string) {
		q := g.queues(t)
		return len(q) == 1 && q[0].(map[string]any)["scope"] == "user/"+g.alice.userID &&
			q[0].(map[string]any)["waiting"] == float64(1), fmt.Sprint(q)
	})
	select {
	case r := <-done:
		t.Fatalf("the second call was answered while the first held the slot: %v", r.err)
	default:
	}
	close(release)
	for s.Next() {
	}
	s.Close()
	r := <-done
	if r.err != nil {
		t.Fatalf("the queued call: %v", r.err)
	}
	if r.resp.Header.Get("X-Sluice-Queue-Wait-Ms") == "" || r.resp.Header.Get("X-Sluice-Queue-Ahead") != "0" {
		t.Errorf("queue headers: wait %q, ahead %q; want a wait and 0 ahead",
			r.resp.Header.Get("X-Sluice-Queue-Wait-Ms"), r.resp.Header.Get("X-Sluice-Queue-Ahead"))
	}
	if q := g.queues(t); len(q) != 0 {
		t.Errorf("queues after both calls: %v, want none", q)
	}
	if got := metricValue(t, g.s.url, `sluice_admission_queue_wait_seconds_count{class="normal",outcome="admitted"}`); got != 1 {
		t.Errorf("queue waits admitted: %v, want 1", got)
	}
}

// TestGatewayQueueWaitEnds: a wait longer than admission.max_wait ends
// in the 429 it replaced, saying it waited; a client that gives up leaves
// the queue at once.
func TestGatewayQueueWaitEnds(t *testing.T) {
	up := newUpstream(t)
	g := startQueued(t, up, queuePolicy, 500*time.Millisecond)
	release := make(chan struct{})
	defer close(release)
	holdStream(up, release)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := g.client.Chat.Completions.NewStreaming(ctx, chatParams("gpt-4o-mini"))
	if !s.Next() {
		t.Fatalf("first chunk: %v", s.Err())
	}
	up.setAnswer(nil)
	_, err := g.client.Chat.Completions.New(context.Background(), chatParams("gpt-4o-mini"))
	ae := apiError(t, err)
	if ae.StatusCode != http.StatusTooManyRequests || !strings.Contains(ae.Message, "Waited") || !strings.Contains(ae.Message, "in the queue for a slot") {
		t.Errorf("after the wait: %d %q, want 429 saying it waited in the queue", ae.StatusCode, ae.Message)
	}
	// A client that leaves while queued is out of the queue at once.
	cctx, ccancel := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() {
		_, err := g.client.Chat.Completions.New(cctx, chatParams("gpt-4o-mini"))
		gone <- err
	}()
	waitFor(t, "the third call queued", func() (bool, string) { return len(g.queues(t)) == 1, "" })
	ccancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Errorf("the cancelled call: %v", err)
	}
	waitFor(t, "the cancelled call out of the queue", func() (bool, string) { return len(g.queues(t)) == 0, "" })
	if got := metricValue(t, g.s.url, `sluice_admission_queue_wait_seconds_count{class="normal",outcome="timeout"}`); got != 1 {
		t.Errorf("queue waits timed out: %v, want 1", got)
	}
}

// TestQueueIsOneAcrossInstances: three instances on one Redis with the
// admission queue on. alice's one slot is held by a stream on instance 0;
// a call waits for it on instance 1, then another arrives on instance 2.
// The arrival on 2 queues behind 1's waiter (no overtaking across
// instances), and when the stream ends the slot goes to 1's waiter first,
// then to 2's: the instances serve one queue, in Redis's order.
func TestQueueIsOneAcrossInstances(t *testing.T) {
	up := newUpstream(t)
	c := startClusterWith(t, queuePolicy, time.Second, func(cfg *config.Config) {
		cfg.Admission = config.Default().Admission
		cfg.Admission.MaxWait = config.Duration(30 * time.Second)
		cfg.Admission.PollInterval = config.Duration(50 * time.Millisecond)
		cfg.Models = append(cfg.Models, up.model("gpt-4o-mini"))
	})
	clients := make([]openai.Client, 3)
	for i, a := range c.apps {
		clients[i] = openai.NewClient(option.WithBaseURL(a.url+"/v1/"), option.WithAPIKey(c.key), option.WithMaxRetries(0))
	}
	release := make(chan struct{})
	holdStream(up, release)
	s := clients[0].Chat.Completions.NewStreaming(context.Background(), chatParams("gpt-4o-mini"))
	if !s.Next() {
		t.Fatalf("first chunk: %v", s.Err())
	}
	up.setAnswer(nil)
	order := make(chan string, 2)
	ask := func(i int, name string) {
		if _, err := clients[i].Chat.Completions.New(context.Background(), chatParams("gpt-4o-mini")); err != nil {
			order <- name + ": " + err.Error()
			return
		}
		order <- name
	}
	waiting := func(i int) int {
		code, body := call(t, "GET", c.apps[i].url+"/api/v1/usage", c.key, "")
		if code != 200 {
			t.Fatalf("usage: %d %v", code, body)
		}
		n := 0
		for _, q := range body["queues"].([]any) {
			n += int(q.(map[string]any)["waiting"].(float64))
		}
		return n
	}
	go ask(1, "first")
	eventually(t, patience, "the first call waiting on instance 1", func() bool { return waiting(1) == 1 })
	// Instance 2 must have read that someone waits before its arrival.
	time.Sleep(200 * time.Millisecond)
	go ask(2, "second")
	eventually(t, patience, "the second call waiting on instance 2", func() bool { return waiting(2) == 1 })
	select {
	case got := <-order:
		t.Fatalf("%s answered while the slot was held", got)
	default:
	}
	close(release)
	for s.Next() {
	}
	s.Close()
	if got := <-order; got != "first" {
		t.Errorf("%s admitted first, want the call that waited first (on another instance)", got)
	}
	if got := <-order; got != "second" {
		t.Errorf("then %s, want second", got)
	}
}
