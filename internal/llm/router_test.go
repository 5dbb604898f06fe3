package llm_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
)

// clock is a fake clock for cooldowns.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// router builds a registry over models with a fake clock and a seeded
// source; opts nil means the defaults.
func router(t testing.TB, models []llm.ModelConfig, opts *llm.RouterOptions) (*llm.Registry, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	r, err := llm.NewRegistryWith(models, nil, llm.RegistryOptions{Router: opts, Now: c.Now, Rand: rand.New(rand.NewPCG(1, 2))})
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

// sim is a deployment on the simulated provider.
func sim(name string, weight int, dedicatedTo ...string) llm.DeploymentConfig {
	return llm.DeploymentConfig{Name: name, Weight: weight, DedicatedTo: dedicatedTo}
}

// names is "model/deployment" for each candidate.
func names(ms []*llm.Model) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name() + "/" + m.Deployment()
	}
	return out
}

func TestRouteOrder(t *testing.T) {
	// a: two open deployments and two dedicated ones; falls back to b then
	// c. b falls back to d and to a (a loop); c to d again. e is wholly
	// dedicated to acme.
	models := []llm.ModelConfig{
		{Name: "a", Provider: "simulated", Fallbacks: []string{"b", "c"}, Deployments: []llm.DeploymentConfig{
			sim("a1", 1), sim("acme", 1, "tenant:acme"), sim("a2", 1), sim("ent", 1, "plan:enterprise"),
		}},
		{Name: "b", Provider: "simulated", Fallbacks: []string{"d", "a"}},
		{Name: "c", Provider: "simulated", Fallbacks: []string{"d"}},
		{Name: "d", Provider: "simulated", Deployments: []llm.DeploymentConfig{sim("d1", 1), sim("d-acme", 1, "tenant:acme")}},
		{Name: "e", Provider: "simulated", Fallbacks: []string{"b"}, Deployments: []llm.DeploymentConfig{sim("e-acme", 1, "tenant:acme")}},
	}
	tests := []struct {
		name  string
		model string
		tags  llm.RouteTags
		// groups: the candidates in order, each group a set whose order
		// is drawn at random.
		groups [][]string
	}{
		{"anyone", "a", llm.RouteTags{Tenant: "t1", Plan: "free"},
			[][]string{{"a/a1", "a/a2"}, {"b/b"}, {"c/c"}, {"d/d1"}}},
		{"no tags", "a", llm.RouteTags{},
			[][]string{{"a/a1", "a/a2"}, {"b/b"}, {"c/c"}, {"d/d1"}}},
		{"tenant acme first on its own", "a", llm.RouteTags{Tenant: "acme", Plan: "free"},
			[][]string{{"a/acme"}, {"a/a1", "a/a2"}, {"b/b"}, {"c/c"}, {"d/d-acme"}, {"d/d1"}}},
		{"enterprise plan", "a", llm.RouteTags{Tenant: "t2", Plan: "enterprise"},
			[][]string{{"a/ent"}, {"a/a1", "a/a2"}, {"b/b"}, {"c/c"}, {"d/d1"}}},
		{"acme on the enterprise plan", "a", llm.RouteTags{Tenant: "acme", Plan: "enterprise"},
			[][]string{{"a/acme", "a/ent"}, {"a/a1", "a/a2"}, {"b/b"}, {"c/c"}, {"d/d-acme"}, {"d/d1"}}},
		{"a plan named like a tenant is not that tenant", "a", llm.RouteTags{Tenant: "t3", Plan: "acme"},
			[][]string{{"a/a1", "a/a2"}, {"b/b"}, {"c/c"}, {"d/d1"}}},
		{"fallback loop followed once", "b", llm.RouteTags{},
			[][]string{{"b/b"}, {"d/d1"}, {"a/a1", "a/a2"}, {"c/c"}}},
		{"wholly dedicated, to this caller", "e", llm.RouteTags{Tenant: "acme"},
			[][]string{{"e/e-acme"}, {"b/b"}, {"d/d-acme"}, {"d/d1"}, {"a/acme"}, {"a/a1", "a/a2"}, {"c/c"}}},
	}
	r, _ := router(t, models, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := map[string]bool{} // the orders seen of each random group
			for range 200 {
				got, err := r.Route(tt.model, tt.tags)
				if err != nil {
					t.Fatal(err)
				}
				g := names(got)
				rest := g
				for _, group := range tt.groups {
					if len(rest) < len(group) {
						t.Fatalf("Route = %v, want groups %v", g, tt.groups)
					}
					head := rest[:len(group)]
					if !sameSet(head, group) {
						t.Fatalf("Route = %v, want groups %v", g, tt.groups)
					}
					if len(group) > 1 {
						seen[strings.Join(head, ",")] = true
					}
					rest = rest[len(group):]
				}
				if len(rest) != 0 {
					t.Fatalf("Route = %v, want groups %v (no more)", g, tt.groups)
				}
			}
			for _, group := range tt.groups {
				if len(group) == 2 && len(seen) < 2 {
					t.Errorf("random groups always came in one order: %v", seen)
				}
			}
		})
	}

	t.Run("dedicated to others only", func(t *testing.T) {
		_, err := r.Route("e", llm.RouteTags{Tenant: "globex", Plan: "enterprise"})
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != errs.Forbidden || e.Field != "model" || !strings.Contains(e.Message, `"e"`) {
			t.Errorf("Route(e) for globex = %v, want forbidden naming the model", err)
		}
	})
	t.Run("unknown model", func(t *testing.T) {
		for _, name := range []string{"gpt-5", ""} {
			_, err := r.Route(name, llm.RouteTags{})
			var e *errs.Error
			if !errors.As(err, &e) || e.Code != errs.Invalid || e.Field != "model" {
				t.Errorf("Route(%q) = %v, want invalid on field model", name, err)
			}
		}
	})
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	count := map[string]int{}
	for _, s := range a {
		count[s]++
	}
	for _, s := range b {
		count[s]--
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}

func TestRouteWeights(t *testing.T) {
	tests := []struct {
		name    string
		deps    []llm.DeploymentConfig
		tags    llm.RouteTags
		weights map[string]int // of the deployments that may come first
	}{
		{"three to one", []llm.DeploymentConfig{sim("x", 3), sim("y", 0)}, llm.RouteTags{},
			map[string]int{"x": 3, "y": 1}},
		{"five three two", []llm.DeploymentConfig{sim("x", 5), sim("y", 3), sim("z", 2)}, llm.RouteTags{},
			map[string]int{"x": 5, "y": 3, "z": 2}},
		{"dedicated ones split among themselves", []llm.DeploymentConfig{sim("x", 1), sim("d1", 1, "plan:pro"), sim("d2", 4, "plan:pro")}, llm.RouteTags{Plan: "pro"},
			map[string]int{"d1": 1, "d2": 4}},
	}
	const n = 10_000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := router(t, []llm.ModelConfig{{Name: "m", Provider: "simulated", Deployments: tt.deps}}, nil)
			first := map[string]int{}
			for range n {
				got, err := r.Route("m", tt.tags)
				if err != nil {
					t.Fatal(err)
				}
				first[got[0].Deployment()]++
			}
			total := 0
			for _, w := range tt.weights {
				total += w
			}
			for name, w := range tt.weights {
				want := float64(n) * float64(w) / float64(total)
				if got := float64(first[name]); got < want*0.95 || got > want*1.05 {
					t.Errorf("%s came first %d times in %d, want %.0f ± 5%%", name, first[name], n, want)
				}
			}
			if len(first) != len(tt.weights) {
				t.Errorf("first candidates %v, want only %v", first, tt.weights)
			}
		})
	}
}

var (
	errRateLimited = &llm.ProviderError{Provider: "openai", Status: http.StatusTooManyRequests, Code: "rate_limit_exceeded", Retryable: true}
	errBadRequest  = &llm.ProviderError{Provider: "openai", Status: http.StatusBadRequest, Code: "context_length_exceeded"}
)

func TestCooldown(t *testing.T) {
	models := []llm.ModelConfig{
		{Name: "m", Provider: "simulated", Fallbacks: []string{"f"}, Deployments: []llm.DeploymentConfig{sim("x", 1), sim("y", 1), sim("z", 1)}},
		{Name: "f", Provider: "simulated"},
	}
	r, clk := router(t, models, nil)
	deps, _ := r.Deployments("m")
	x := deps[0]

	type step struct {
		do      func()
		cooling bool // x after the step
	}
	fail := func(err error) func() { return func() { r.Report(x, err) } }
	steps := []step{
		{fail(errRateLimited), false},
		{fail(errRateLimited), false},
		{fail(nil), false}, // a success clears the count
		{fail(errRateLimited), false},
		{fail(errBadRequest), false},    // the request's fault: no count, no reset
		{fail(context.Canceled), false}, // the caller went away
		{fail(fmt.Errorf("openai: %w", context.Canceled)), false},
		{fail(errRateLimited), false},
		{fail(errRateLimited), true}, // the third in a row
		{func() { clk.Add(29 * time.Second) }, true},
		{fail(nil), true}, // a success as a last resort does not end it
		{func() { clk.Add(time.Second) }, false},
		// The count started again when x cooled down.
		{fail(errRateLimited), false},
		{fail(errRateLimited), false},
		{fail(&llm.ProviderError{Provider: "openai", Message: "request failed", Retryable: true, Err: io.ErrUnexpectedEOF}), true},
		{func() { clk.Add(30 * time.Second) }, false},
	}
	for i, s := range steps {
		s.do()
		if got := r.CoolingDown(x); got != s.cooling {
			t.Fatalf("step %d: CoolingDown = %v, want %v", i, got, s.cooling)
		}
		for range 20 {
			got, err := r.Route("m", llm.RouteTags{})
			if err != nil {
				t.Fatal(err)
			}
			g := names(got)
			if len(g) != 4 {
				t.Fatalf("step %d: Route = %v, want x, y, z and f", i, g)
			}
			// Cooling down: after the fallback, as a last resort.
			if s.cooling && (g[3] != "m/x" || g[2] != "f/f") {
				t.Fatalf("step %d: Route = %v, want x last, after f", i, g)
			}
			if !s.cooling && g[3] != "f/f" {
				t.Fatalf("step %d: Route = %v, want f last", i, g)
			}
		}
	}
	for _, m := range deps[1:] {
		if r.CoolingDown(m) {
			t.Errorf("%v cooling down; only x failed", m)
		}
	}
}

func TestCooldownOptions(t *testing.T) {
	models := []llm.ModelConfig{{Name: "m", Provider: "simulated"}}
	t.Run("after one, for a minute", func(t *testing.T) {
		r, clk := router(t, models, &llm.RouterOptions{CooldownAfter: 1, CooldownFor: time.Minute})
		m, _ := r.Lookup("m")
		r.Report(m, errRateLimited)
		if !r.CoolingDown(m) {
			t.Fatal("not cooling after one failure, want cooling")
		}
		// The only deployment is still offered while it cools down.
		if got, err := r.Route("m", llm.RouteTags{}); err != nil || len(got) != 1 || got[0] != m {
			t.Errorf("Route = %v, %v; want the cooling deployment as the last resort", got, err)
		}
		clk.Add(time.Minute - time.Nanosecond)
		if !r.CoolingDown(m) {
			t.Error("cooldown ended early")
		}
		clk.Add(time.Nanosecond)
		if r.CoolingDown(m) {
			t.Error("cooldown did not end after a minute")
		}
	})
	t.Run("never", func(t *testing.T) {
		r, _ := router(t, models, &llm.RouterOptions{CooldownAfter: 0, CooldownFor: time.Minute})
		m, _ := r.Lookup("m")
		for range 100 {
			r.Report(m, errRateLimited)
		}
		if r.CoolingDown(m) {
			t.Error("cooling with cooldown_after 0, want never")
		}
	})
}

func TestRouterOptions(t *testing.T) {
	def := llm.DefaultRouterOptions()
	if def != (llm.RouterOptions{CooldownAfter: 3, CooldownFor: 30 * time.Second, Retries: 1, Backoff: 200 * time.Millisecond}) {
		t.Errorf("DefaultRouterOptions = %+v", def)
	}
	r, err := llm.NewRegistry(nil, nil)
	if err != nil || r.RouterOptions() != def {
		t.Errorf("NewRegistry's RouterOptions = %+v, %v; want the defaults", r.RouterOptions(), err)
	}
	mine := llm.RouterOptions{CooldownAfter: 5, CooldownFor: time.Minute, Retries: 2, Backoff: time.Second, AttemptTimeout: 20 * time.Second}
	r, err = llm.NewRegistryWith(nil, nil, llm.RegistryOptions{Router: &mine})
	if err != nil || r.RouterOptions() != mine {
		t.Errorf("RouterOptions = %+v, %v; want %+v", r.RouterOptions(), err, mine)
	}

	tests := []struct {
		edit  func(*llm.RouterOptions)
		field string
	}{
		{func(o *llm.RouterOptions) { o.CooldownAfter = -1 }, "routing.cooldown_after"},
		{func(o *llm.RouterOptions) { o.CooldownAfter = 1001 }, "routing.cooldown_after"},
		{func(o *llm.RouterOptions) { o.CooldownFor = 0 }, "routing.cooldown_for"},
		{func(o *llm.RouterOptions) { o.CooldownFor = 2 * time.Hour }, "routing.cooldown_for"},
		{func(o *llm.RouterOptions) { o.Retries = -1 }, "routing.retries"},
		{func(o *llm.RouterOptions) { o.Retries = 11 }, "routing.retries"},
		{func(o *llm.RouterOptions) { o.Backoff = -time.Millisecond }, "routing.backoff"},
		{func(o *llm.RouterOptions) { o.Backoff = 2 * time.Minute }, "routing.backoff"},
		{func(o *llm.RouterOptions) { o.AttemptTimeout = -time.Second }, "routing.attempt_timeout"},
	}
	for _, tt := range tests {
		o := llm.DefaultRouterOptions()
		tt.edit(&o)
		_, err := llm.NewRegistryWith(nil, nil, llm.RegistryOptions{Router: &o})
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != errs.Invalid || e.Field != tt.field || !strings.Contains(e.Message, tt.field) {
			t.Errorf("%+v: err = %v, want invalid naming %s", o, err, tt.field)
		}
	}

	for _, tt := range []struct {
		backoff time.Duration
		n       int
		want    time.Duration
	}{
		{200 * time.Millisecond, 0, 0},
		{200 * time.Millisecond, 1, 200 * time.Millisecond},
		{200 * time.Millisecond, 2, 400 * time.Millisecond},
		{200 * time.Millisecond, 4, 1600 * time.Millisecond},
		{20 * time.Second, 3, time.Minute}, // 80s, capped
		{0, 3, 0},
	} {
		if got := (llm.RouterOptions{Backoff: tt.backoff}).Delay(tt.n); got != tt.want {
			t.Errorf("Delay(%d) with backoff %s = %s, want %s", tt.n, tt.backoff, got, tt.want)
		}
	}
}

func TestRetryable(t *testing.T) {
	// Errors as the OpenAI provider returns them from real answers.
	answer := func(status int, fixture string) func(*testing.T) error {
		return func(t *testing.T) error {
			up := newUpstream(t, replay(t, status, "application/json", fixture, nil))
			_, err := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil).Chat(context.Background(), chatRequest())
			return err
		}
	}
	fixed := func(err error) func(*testing.T) error { return func(*testing.T) error { return err } }
	tests := []struct {
		name string
		err  func(*testing.T) error
		want bool
	}{
		{"429 rate limit", answer(429, "openai/error_429.json"), true},
		{"429 out of credit", answer(429, "openai/error_429_quota.json"), false},
		{"500", answer(500, "openai/error_500.json"), true},
		{"400 context too long", answer(400, "openai/error_400.json"), false},
		{"401 bad key", answer(401, "openai/error_401.json"), false},
		{"503 overloaded", fixed(&llm.ProviderError{Provider: "openai", Status: 503, Retryable: true}), true},
		{"408", fixed(&llm.ProviderError{Provider: "openai", Status: 408, Retryable: true}), true},
		{"409, although marked retryable", fixed(&llm.ProviderError{Provider: "openai", Status: 409, Retryable: true}), false},
		{"404", fixed(&llm.ProviderError{Provider: "ollama", Status: 404}), false},
		{"connection refused", func(t *testing.T) error {
			up := newUpstream(t, replay(t, 200, "application/json", "openai/chat.json", nil))
			up.Close()
			_, err := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil).Chat(context.Background(), chatRequest())
			return err
		}, true},
		{"stream cut", func(t *testing.T) error {
			up := newUpstream(t, replayStream(t, "openai/stream.sse", streamOpts{contentType: "text/event-stream", sep: "\n\n", cutAfter: 2}))
			_, err := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil).Stream(context.Background(), chatRequest(), nil)
			return err
		}, true},
		{"attempt timeout", func(t *testing.T) error {
			up := newUpstream(t, replayStream(t, "openai/stream.sse", streamOpts{contentType: "text/event-stream", sep: "\n\n", holdAfter: 1}))
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			_, err := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil).Stream(ctx, chatRequest(), nil)
			return err
		}, true},
		{"caller went away", func(t *testing.T) error {
			ctx, cancel := context.WithCancel(context.Background())
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				cancel() // the caller hangs up once the answer has started
				<-r.Context().Done()
			})
			_, err := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil).Stream(ctx, chatRequest(), nil)
			return err
		}, false},
		{"canceled", fixed(context.Canceled), false},
		{"canceled, wrapped", fixed(fmt.Errorf("simulated: %w", context.Canceled)), false},
		{"deadline", fixed(context.DeadlineExceeded), true},
		{"domain error", fixed(errs.E(errs.Invalid, "bad")), false},
		{"plain error", fixed(errors.New("boom")), false},
		{"nil", fixed(nil), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.err(t)
			if got := llm.Retryable(err); got != tt.want {
				t.Errorf("Retryable(%v) = %v, want %v", err, got, tt.want)
			}
		})
	}
}

// TestDeploymentSendsUpstream: Chat and Stream send the provider's name
// for the model, with the deployment's key, to the deployment's base URL.
func TestDeploymentSendsUpstream(t *testing.T) {
	plain := newUpstream(t, replay(t, 200, "application/json", "openai/chat.json", nil))
	streamed := newUpstream(t, replayStream(t, "openai/stream.sse", sse()))
	models := []llm.ModelConfig{{Name: "smart", Provider: "openai", Deployments: []llm.DeploymentConfig{
		{Name: "plain", BaseURL: plain.URL + "/v1", APIKeyEnv: "PLAIN_KEY", Model: "gpt-4o-mini-2024-07-18"},
		{Name: "streamed", BaseURL: streamed.URL + "/v1", APIKeyEnv: "STREAM_KEY", Model: "gpt-4o-mini"},
	}}}
	r, err := llm.NewRegistry(models, env(map[string]string{"PLAIN_KEY": testKey, "STREAM_KEY": "sk-stream"}))
	if err != nil {
		t.Fatal(err)
	}
	deps, _ := r.Deployments("smart")
	req := chatRequest()
	req.Model = "smart" // what the caller asked for; replaced
	if _, err := deps[0].Chat(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	got := plain.last(t)
	if got.Body["model"] != "gpt-4o-mini-2024-07-18" || got.Header.Get("Authorization") != "Bearer "+testKey || got.Path != "/v1/chat/completions" {
		t.Errorf("Chat sent model %v with %q to %s, want the upstream name with the deployment's key", got.Body["model"], got.Header.Get("Authorization"), got.Path)
	}
	if _, err := deps[1].Stream(context.Background(), req, nil); err != nil {
		t.Fatal(err)
	}
	got = streamed.last(t)
	if got.Body["model"] != "gpt-4o-mini" || got.Header.Get("Authorization") != "Bearer sk-stream" {
		t.Errorf("Stream sent model %v with %q, want gpt-4o-mini with the deployment's key", got.Body["model"], got.Header.Get("Authorization"))
	}
	if deps[0].Name() != "smart" {
		t.Errorf("Name = %q, want the public name smart", deps[0].Name())
	}
}

// TestRouteConcurrent is for the race detector: routing while reports
// cool deployments down and the clock moves.
func TestRouteConcurrent(t *testing.T) {
	models := []llm.ModelConfig{{Name: "m", Provider: "simulated", Deployments: []llm.DeploymentConfig{sim("x", 2), sim("y", 1), sim("z", 1)}}}
	r, clk := router(t, models, &llm.RouterOptions{CooldownAfter: 2, CooldownFor: time.Second})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				got, err := r.Route("m", llm.RouteTags{})
				if err != nil || len(got) != 3 {
					t.Errorf("Route = %v, %v", got, err)
					return
				}
				if (g+i)%3 == 0 {
					r.Report(got[0], errRateLimited)
				} else {
					r.Report(got[0], nil)
				}
				if g == 0 {
					clk.Add(10 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkRoute routes a call to a model with three weighted deployments
// and a fallback, one of them cooling down, as on every request.
func BenchmarkRoute(b *testing.B) {
	models := []llm.ModelConfig{
		{Name: "m", Provider: "simulated", Fallbacks: []string{"f"}, Deployments: []llm.DeploymentConfig{sim("x", 3), sim("y", 2), sim("z", 1)}},
		{Name: "f", Provider: "simulated"},
	}
	for _, bc := range []struct {
		name string
		opts llm.RegistryOptions
		cool bool
	}{
		{"global rand", llm.RegistryOptions{}, false},
		{"global rand, one cooling", llm.RegistryOptions{}, true},
		{"seeded rand", llm.RegistryOptions{Rand: rand.New(rand.NewPCG(1, 2))}, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r, err := llm.NewRegistryWith(models, nil, bc.opts)
			if err != nil {
				b.Fatal(err)
			}
			if bc.cool {
				deps, _ := r.Deployments("m")
				for range 3 {
					r.Report(deps[1], errRateLimited)
				}
			}
			tags := llm.RouteTags{Tenant: "t1", Plan: "free"}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Route("m", tags); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("parallel", func(b *testing.B) {
		r, err := llm.NewRegistry(models, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				got, _ := r.Route("m", llm.RouteTags{})
				r.Report(got[0], nil)
			}
		})
	})
}
