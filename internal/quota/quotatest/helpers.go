package quotatest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// Factory returns a fresh, empty backend and the clock it reads.
type Factory func(t *testing.T) (quota.Backend, *Clock)

// env is one test's backend and clock.
type env struct {
	t   *testing.T
	b   quota.Backend
	clk *Clock
	ctx context.Context
}

// start builds a backend with its clock at at.
func start(t *testing.T, newBackend Factory, at time.Time) *env {
	t.Helper()
	b, clk := newBackend(t)
	clk.Set(at)
	t.Cleanup(func() { b.Close() })
	return &env{t: t, b: b, clk: clk, ctx: context.Background()}
}

func (e *env) now() time.Time { return e.clk.Now() }

func (e *env) advance(d time.Duration) { e.clk.Advance(d) }

// acquire admits r or fails the test.
func (e *env) acquire(r quota.Request) quota.Ticket {
	e.t.Helper()
	tk, err := e.b.Acquire(e.ctx, r)
	if err != nil {
		e.t.Fatalf("Acquire(%+v): got error %v, want admission", r.Ask, err)
	}
	return tk
}

// deny expects r to be denied and returns the denial.
func (e *env) deny(r quota.Request) *quota.Denial {
	e.t.Helper()
	tk, err := e.b.Acquire(e.ctx, r)
	if err == nil {
		e.t.Fatalf("Acquire(%+v): got ticket %s, want denial", r.Ask, tk.ID)
	}
	var d *quota.Denial
	if !errors.As(err, &d) {
		e.t.Fatalf("Acquire(%+v): got error %v, want *quota.Denial", r.Ask, err)
	}
	return d
}

func (e *env) settle(id string, u quota.Usage) quota.Settlement {
	e.t.Helper()
	s, err := e.b.Settle(e.ctx, id, u)
	if err != nil {
		e.t.Fatalf("Settle(%s): got error %v, want nil", id, err)
	}
	return s
}

func (e *env) use(key string) quota.ScopeUse {
	e.t.Helper()
	u, err := e.b.Use(e.ctx, key)
	if err != nil {
		e.t.Fatalf("Use(%s): got error %v, want nil", key, err)
	}
	return u
}

// wantUsed checks a scope's budget counters and concurrency.
func (e *env) wantUsed(key string, want used) {
	e.t.Helper()
	if got := usedOf(e.use(key)); got != want {
		e.t.Errorf("Use(%s): got %+v, want %+v", key, got, want)
	}
}

// used is the counted part of a ScopeUse.
type used struct {
	TokensDay, TokensMonth, GPUMillis, CostMicros, Concurrency int64
}

func usedOf(u quota.ScopeUse) used {
	return used{u.TokensDay.Used, u.TokensMonth.Used, u.GPUMillis.Used, u.CostMicros.Used, u.Concurrency}
}

func (u used) add(o used) used {
	return used{u.TokensDay + o.TokensDay, u.TokensMonth + o.TokensMonth, u.GPUMillis + o.GPUMillis,
		u.CostMicros + o.CostMicros, u.Concurrency + o.Concurrency}
}

// sameUse compares two ScopeUse values, times by instant.
func sameUse(a, b quota.ScopeUse) bool {
	return a.Key == b.Key && sameWindow(a.TokensDay, b.TokensDay) && sameWindow(a.TokensMonth, b.TokensMonth) &&
		sameWindow(a.GPUMillis, b.GPUMillis) && sameWindow(a.CostMicros, b.CostMicros) &&
		a.Concurrency == b.Concurrency && sameRate(a.Requests, b.Requests) && sameRate(a.TokensRate, b.TokensRate)
}

func sameWindow(a, b quota.WindowUse) bool {
	return a.Used == b.Used && a.Start.Equal(b.Start) && a.End.Equal(b.End)
}

func sameRate(a, b quota.RateUse) bool {
	return a.Level == b.Level && a.NextAt.Equal(b.NextAt) && a.EmptyAt.Equal(b.EmptyAt)
}

// sameSettlement compares two settlements, times by instant, ignoring
// Replay.
func sameSettlement(a, b quota.Settlement) bool {
	at, bt := a.SettledAt, b.SettledAt
	a.SettledAt, b.SettledAt = time.Time{}, time.Time{}
	a.Replay, b.Replay = false, false
	return a == b && at.Equal(bt)
}

// snapshot returns the uses of keys.
func (e *env) snapshot(keys ...string) []quota.ScopeUse {
	e.t.Helper()
	out := make([]quota.ScopeUse, len(keys))
	for i, k := range keys {
		out[i] = e.use(k)
	}
	return out
}

// unchanged checks that the uses of the snapshot's scopes are as before.
func (e *env) unchanged(what string, before []quota.ScopeUse) {
	e.t.Helper()
	for _, b := range before {
		if a := e.use(b.Key); !sameUse(a, b) {
			e.t.Errorf("%s changed scope %s: got %+v, want %+v", what, b.Key, a, b)
		}
	}
}

func sc(key string, l *quota.Limits) quota.Scope { return quota.Scope{Key: key, Limits: l} }

func scIn(key string, loc *time.Location, l *quota.Limits) quota.Scope {
	return quota.Scope{Key: key, Limits: l, Loc: loc}
}

func req(a quota.Ask, chain ...quota.Scope) quota.Request {
	return quota.Request{Chain: chain, Ask: a}
}

func keys(chain []quota.Scope) []string {
	out := make([]string, len(chain))
	for i, s := range chain {
		out[i] = s.Key
	}
	return out
}

func mustLoad(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("LoadLocation(%q): %v", name, err)
	}
	return loc
}

// checkDenial compares a denial with want. With hint set, RetryAfter and
// ResetAt are only required to be positive and in the future (concurrency).
func checkDenial(t *testing.T, got *quota.Denial, want quota.Denial, hint bool, now time.Time) {
	t.Helper()
	if got.Code != want.Code || got.Scope != want.Scope || got.Dimension != want.Dimension ||
		got.Window != want.Window || got.Limit != want.Limit || got.Used != want.Used ||
		got.Requested != want.Requested || got.Model != want.Model || got.Period != want.Period {
		t.Errorf("denial: got %+v, want %+v", *got, want)
	}
	if hint {
		if got.RetryAfter <= 0 || !got.ResetAt.After(now) {
			t.Errorf("denial hint: got RetryAfter %v ResetAt %v, want both in the future of %v", got.RetryAfter, got.ResetAt, now)
		}
		return
	}
	if got.RetryAfter != want.RetryAfter {
		t.Errorf("denial RetryAfter: got %v, want %v", got.RetryAfter, want.RetryAfter)
	}
	if !got.ResetAt.Equal(want.ResetAt) {
		t.Errorf("denial ResetAt: got %v, want %v", got.ResetAt, want.ResetAt)
	}
	sentinel := map[string]error{
		quota.CodeRateLimited:     quota.ErrRateLimited,
		quota.CodeQuotaExceeded:   quota.ErrQuotaExceeded,
		quota.CodeModelNotAllowed: quota.ErrModelNotAllowed,
	}[want.Code]
	if !errors.Is(got, sentinel) {
		t.Errorf("errors.Is(denial, %v): got false, want true", sentinel)
	}
}
