package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/gateway"
	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// What the gateway adds to a call, in process: the same keep-alive client
// sends the same short non-streaming chat request straight to a
// zero-latency upstream (BenchmarkDirect), through a bare
// httputil.ReverseProxy (BenchmarkBareReverseProxy), and through Sluice
// with quotas active (BenchmarkChatPassthrough: the handler alone;
// BenchmarkChatPassthroughAPI: behind the API's request-id and request-log
// middleware, as `sluice serve` mounts it). Client, servers and upstream
// share the process, so ns/op and allocs/op are the whole round trip's; the
// differences are the proxies'. scripts/bench-gateway measures the same
// with each server in its own process. Figures: docs/performance.md.
//
//	go test -run '^$' -bench . -benchmem ./internal/gateway/
//
// Every goroutine carries a profiler label naming its side (client,
// upstream, proxy, sluice), inherited by the goroutines it starts (a
// server's connections, a transport's loops, the usage recorder), so that
// a CPU profile can be cut down to the gateway's own work:
//
//	go test -run '^$' -bench 'ChatPassthroughAPI/32conns' -cpuprofile cpu.out ./internal/gateway/
//	go tool pprof -tagfocus side=sluice -top -cum gateway.test cpu.out

// benchCompletion is the upstream's answer: a chat.completion as OpenAI
// sends it, with usage.
const benchCompletion = `{"id":"chatcmpl-bench0001","object":"chat.completion","created":1733000000,"model":"gpt-4o-mini-2024-07-18",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?","refusal":null},` +
	`"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":9,"total_tokens":23,` +
	`"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_bench"}`

const benchRequest = `{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},` +
	`{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":64}`

// benchLimits are checked and charged on every request, and never deny
// during a benchmark: what is measured is the admitted path.
const benchLimits = `{"requests":"1000000/min","tokens":"1000000000000/day"}`

// as runs f with the profiler label side=name, which the goroutines f
// starts inherit.
func as(side string, f func()) {
	pprof.Do(context.Background(), pprof.Labels("side", side), func(context.Context) { f() })
}

func benchUpstream(b *testing.B) *httptest.Server {
	b.Helper()
	body := []byte(benchCompletion)
	var up *httptest.Server
	as("upstream", func() {
		up = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		}))
	})
	b.Cleanup(up.Close)
	return up
}

// sluiceWorld is the gateway wired as cmd/sluice wires it (metrics
// included), over a real SQLite store, the in-process quota engine and the
// usage recorder: a tenant with a project, a member with a key, and limits
// on the key, the member and the global scope.
type sluiceWorld struct {
	handler *gateway.Handler
	api     *httpapi.Server
	key     string
}

func newSluiceWorld(b *testing.B, upstreamURL string) *sluiceWorld {
	b.Helper()
	llm.WarmTokenizers() // before the label: loading them is not a request's work
	var w *sluiceWorld
	as("sluice", func() { w = buildSluice(b, upstreamURL) })
	return w
}

func buildSluice(b *testing.B, upstreamURL string) *sluiceWorld {
	b.Helper()
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(b.TempDir(), "sluice.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	// Production's logger (JSON, info) writing nowhere: the request log and
	// the governed-call log are formatted as they would be.
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	ten := tenancy.NewService(st, log)
	boot, err := ten.Bootstrap(ctx, "")
	if err != nil {
		b.Fatal(err)
	}
	p, err := ten.Authenticate(ctx, boot.Secret)
	if err != nil {
		b.Fatal(err)
	}
	admin := tenancy.WithPrincipal(ctx, p)
	mgr := policy.NewManager(st, policy.Spec{}, log)
	pol := policy.NewService(st, mgr, log)
	if err := pol.EnsureDefaultPlans(ctx); err != nil {
		b.Fatal(err)
	}
	if err := mgr.Reload(ctx); err != nil {
		b.Fatal(err)
	}
	ten.OnChange = func(ctx context.Context) { _ = mgr.Reload(context.WithoutCancel(ctx)) }
	tn, err := ten.CreateTenant(admin, tenancy.TenantInput{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	prj, err := ten.CreateProject(admin, tenancy.ProjectInput{TenantID: tn.ID, Name: "web"})
	if err != nil {
		b.Fatal(err)
	}
	u, err := ten.CreateUser(admin, tenancy.UserInput{TenantID: tn.ID, Name: "alice"})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := ten.AddMember(admin, tenancy.MembershipInput{UserID: u.ID, ProjectID: prj.ID}); err != nil {
		b.Fatal(err)
	}
	var lim policy.Spec
	if err := json.Unmarshal([]byte(benchLimits), &lim); err != nil {
		b.Fatal(err)
	}
	for _, scope := range []string{policy.GlobalScope, policy.ScopeName(policy.KindUser, u.ID)} {
		if _, err := pol.SetLimits(admin, scope, policy.LimitsInput{Limits: lim}); err != nil {
			b.Fatalf("limits of %s: %v", scope, err)
		}
	}
	_, secret, _, err := pol.CreateKey(admin, policy.KeyInput{
		KeyInput: tenancy.KeyInput{UserID: u.ID, ProjectID: prj.ID, Name: "bench"}, Limits: &lim})
	if err != nil {
		b.Fatal(err)
	}
	if err := mgr.Reload(ctx); err != nil {
		b.Fatal(err)
	}

	engine := quota.NewMemory(quota.Options{})
	b.Cleanup(func() { engine.Close() })
	var rec *usage.Recorder
	mt := metrics.New(func() float64 { return float64(rec.Pending()) })
	rec = usage.NewRecorder(st, log, 100*time.Millisecond, usage.WithObserver(mt))
	b.Cleanup(func() { rec.Close() })
	meter := metering.New(engine, mgr, rec, log)
	meter.Ledger = st.UsageEvent
	meter.OnDecision = func(kind, result, dim string) { mt.Decisions.WithLabelValues(kind, result, dim).Inc() }
	meter.OnSettle = mt.Settlements.Inc
	// The model table, the routing policy and the gate as `sluice serve`
	// builds them from a config with one openai model and no routing section.
	reg, err := llm.NewRegistryWith([]llm.ModelConfig{{Name: "gpt-4o-mini", Provider: llm.ProviderOpenAI,
		BaseURL: upstreamURL + "/v1", APIKey: llm.NewSecret("sk-bench-upstream"),
		InputPricePerMTok: 0.15, OutputPricePerMTok: 0.60, ContextWindow: 128_000}}, nil, llm.RegistryOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ro := reg.RouterOptions()
	g := &gate.Gate{Meter: meter, Log: log, Health: reg, Engine: engine,
		Retry: gate.Retry{Retries: ro.Retries, Backoff: ro.Backoff, AttemptTimeout: ro.AttemptTimeout},
		OnModelCall: func(model, provider, outcome string, in, out int) {
			mt.ModelCalls.WithLabelValues(model, provider, outcome).Inc()
			mt.Tokens.WithLabelValues(model, "input").Add(float64(in))
			mt.Tokens.WithLabelValues(model, "output").Add(float64(out))
		}}
	h := &gateway.Handler{Auth: ten, Gate: g, Models: reg, Policy: mgr, Log: log}
	api := &httpapi.Server{Tenancy: ten, Policy: pol, Meter: meter, Metrics: mt, Log: log, Gateway: h}
	return &sluiceWorld{handler: h, api: api, key: secret}
}

// benchCalls sends benchRequest to url, checking each answer: one after
// another on one keep-alive connection ("1conn", ns/op is the round
// trip), and from 32 connections at once ("32conns", ns/op is the inverse
// of the throughput).
func benchCalls(b *testing.B, url, key string) {
	b.Run("1conn", func(b *testing.B) { benchConns(b, url, key, 1) })
	b.Run("32conns", func(b *testing.B) { benchConns(b, url, key, 32) })
}

func benchConns(b *testing.B, url, key string, conns int) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxConnsPerHost, tr.MaxIdleConnsPerHost = conns, conns
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr}
	call := func() error {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(benchRequest))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := cl.Do(req)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("got %d %s (%v), want 200", resp.StatusCode, body, err)
		}
		return nil
	}
	as("client", func() {
		for range 200 { // warm the connection, the pools and the quota state
			if err := call(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportAllocs()
		if conns == 1 {
			for b.Loop() {
				if err := call(); err != nil {
					b.Fatal(err)
				}
			}
			return
		}
		b.SetParallelism(max(conns/runtime.GOMAXPROCS(0), 1))
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := call(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func BenchmarkDirect(b *testing.B) {
	up := benchUpstream(b)
	benchCalls(b, up.URL+"/v1/chat/completions", "sk-bench")
}

func BenchmarkBareReverseProxy(b *testing.B) {
	up := benchUpstream(b)
	target, _ := url.Parse(up.URL)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256 // as Sluice's providers' pool
	var px *httptest.Server
	as("proxy", func() {
		px = httptest.NewServer(&httputil.ReverseProxy{
			Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target) },
			Transport: tr,
		})
	})
	b.Cleanup(px.Close)
	benchCalls(b, px.URL+"/v1/chat/completions", "sk-bench")
}

func BenchmarkChatPassthrough(b *testing.B) {
	w := newSluiceWorld(b, benchUpstream(b).URL)
	var srv *httptest.Server
	as("sluice", func() { srv = httptest.NewServer(w.handler) })
	b.Cleanup(srv.Close)
	benchCalls(b, srv.URL+"/v1/chat/completions", w.key)
}

// BenchmarkChatPassthroughQueued is BenchmarkChatPassthrough with
// gateway.usage_commit: queued (the answer does not wait for the usage
// event's commit).
func BenchmarkChatPassthroughQueued(b *testing.B) {
	w := newSluiceWorld(b, benchUpstream(b).URL)
	w.handler.QueueUsage = true
	var srv *httptest.Server
	as("sluice", func() { srv = httptest.NewServer(w.handler) })
	b.Cleanup(srv.Close)
	benchCalls(b, srv.URL+"/v1/chat/completions", w.key)
}

func BenchmarkChatPassthroughAPI(b *testing.B) {
	w := newSluiceWorld(b, benchUpstream(b).URL)
	var srv *httptest.Server
	as("sluice", func() { srv = httptest.NewServer(w.api.Handler()) })
	b.Cleanup(srv.Close)
	benchCalls(b, srv.URL+"/v1/chat/completions", w.key)
}
