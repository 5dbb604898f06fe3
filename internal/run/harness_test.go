package run_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// harness is the flow runtime wired as cmd/sluice wires it (SQLite store,
// policy, in-memory quota engine, usage recorder, meter, executor,
// service), with one tenant, project and member, and the quota engine on a
// clock the test moves.
type harness struct {
	tb     testing.TB
	store  *sqlstore.Store
	ten    *tenancy.Service
	pol    *policy.Service
	meter  *metering.Meter
	exec   *run.Executor
	svc    *run.Service
	clock  *quotatest.Clock
	engine *quota.Memory

	admin  context.Context // as the platform admin
	member context.Context // as the member, with the key's project
	who    metering.Who
	apiKey string // the member's key
}

// newHarness builds the runtime. With no models it runs in demo mode (every
// model name runs on the simulated model), as the app does.
func newHarness(tb testing.TB, models ...llm.ModelConfig) *harness {
	tb.Helper()
	ctx := context.Background()
	store, err := sqlstore.OpenSQLite(ctx, filepath.Join(tb.TempDir(), "sluice.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { store.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := &harness{tb: tb, store: store, clock: quotatest.NewClock(time.Now())}
	h.ten = tenancy.NewService(store, log)
	boot, err := h.ten.Bootstrap(ctx, "")
	if err != nil {
		tb.Fatal(err)
	}
	mgr := policy.NewManager(store, policy.Spec{}, log)
	h.pol = policy.NewService(store, mgr, log)
	if err := h.pol.EnsureDefaultPlans(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := mgr.Reload(ctx); err != nil {
		tb.Fatal(err)
	}
	h.ten.OnChange = func(ctx context.Context) { _ = mgr.Reload(ctx) }
	h.engine = quota.NewMemory(quota.Options{Now: h.clock.Now})
	tb.Cleanup(func() { h.engine.Close() })
	rec := usage.NewRecorder(store, log, 10*time.Millisecond)
	tb.Cleanup(func() { rec.Close() })
	h.meter = metering.New(h.engine, mgr, rec, log)
	registry, err := llm.NewRegistry(models, nil)
	if err != nil {
		tb.Fatal(err)
	}
	h.exec = &run.Executor{Meter: h.meter, Models: registry, Messages: store, Guard: &run.Guard{}, Log: log, DemoModels: len(models) == 0}
	h.svc = &run.Service{Store: store, Tenancy: h.ten, Exec: h.exec, Log: log}

	h.admin = h.as(boot.Secret)
	tenant, err := h.ten.CreateTenant(h.admin, tenancy.TenantInput{Name: "acme"})
	if err != nil {
		tb.Fatal(err)
	}
	project, err := h.ten.CreateProject(h.admin, tenancy.ProjectInput{TenantID: tenant.ID, Name: "chatbot"})
	if err != nil {
		tb.Fatal(err)
	}
	user, err := h.ten.CreateUser(h.admin, tenancy.UserInput{TenantID: tenant.ID, Name: "alice"})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := h.ten.AddMember(h.admin, tenancy.MembershipInput{UserID: user.ID, ProjectID: project.ID}); err != nil {
		tb.Fatal(err)
	}
	_, secret, err := h.ten.CreateKey(h.admin, tenancy.KeyInput{UserID: user.ID, ProjectID: project.ID})
	if err != nil {
		tb.Fatal(err)
	}
	h.apiKey = secret
	h.member = h.as(secret)
	h.who = metering.Who{TenantID: tenant.ID, UserID: user.ID, ProjectID: project.ID}
	return h
}

// as returns a context acting with the API key secret.
func (h *harness) as(secret string) context.Context {
	h.tb.Helper()
	p, err := h.ten.Authenticate(context.Background(), secret)
	if err != nil {
		h.tb.Fatal(err)
	}
	return tenancy.WithPrincipal(context.Background(), p)
}

// setUserLimits sets the member's limits, written as in the API
// ({"tokens": "1000/day"}).
func (h *harness) setUserLimits(limits string) {
	h.tb.Helper()
	var in policy.LimitsInput
	if err := json.Unmarshal([]byte(`{"limits":`+limits+`}`), &in); err != nil {
		h.tb.Fatal(err)
	}
	if _, err := h.pol.SetLimits(h.admin, "user/"+h.who.UserID, in); err != nil {
		h.tb.Fatal(err)
	}
}

// userUse returns the member's scope counters.
func (h *harness) userUse() quota.ScopeUse {
	h.tb.Helper()
	u, err := h.meter.Use(context.Background(), "user/"+h.who.UserID)
	if err != nil {
		h.tb.Fatal(err)
	}
	return u
}

// upload stores a flow in the member's project under an endpoint name.
func (h *harness) upload(data []byte, endpoint string) *run.Flow {
	h.tb.Helper()
	f, err := h.svc.CreateFlow(h.member, run.FlowInput{EndpointName: endpoint, Data: data})
	if err != nil {
		h.tb.Fatal(err)
	}
	return f
}

// job makes a job of a flow for the member.
func (h *harness) job(f *flow.Flow, input string) *run.Job {
	return &run.Job{RunID: "run_test", Flow: f, Who: h.who, InputValue: input}
}

func readFile(tb testing.TB, path string) []byte {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("%v (the shared LangFlow exports live in /work/shared/langflow, read as ../../../shared/langflow)", err)
	}
	return data
}

func parseFlow(tb testing.TB, data []byte) *flow.Flow {
	tb.Helper()
	f, err := flow.Parse(data)
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// waitFor polls cond until it holds. It gives up after 10 s, so that a
// broken runtime fails the test instead of hanging it; nothing here asserts
// how long anything takes.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("gave up waiting for %s", what)
		}
	}
}
