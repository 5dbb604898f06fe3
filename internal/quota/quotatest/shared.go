package quotatest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// PairFactory returns two backend values over one fresh, empty store (two
// instances on one Redis, say; for an in-process backend, the same value
// twice) and the clock both read.
type PairFactory func(t *testing.T) (a, b quota.Backend, clk *Clock)

// RunShared proves that tickets belong to the store, not to the backend
// value that issued them: a ticket acquired through one value is looked up,
// heartbeated and settled through the other, settled late after expiry,
// and replays agree whichever value answers. The suite closes both
// backends when each test ends.
func RunShared(t *testing.T, newPair PairFactory) {
	tests := []struct {
		name string
		fn   func(*testing.T, PairFactory)
	}{
		{"SettleElsewhere", testSettleElsewhere},
		{"LateSettleElsewhere", testLateSettleElsewhere},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newPair) })
	}
}

// startPair builds two backends over one store with their clock at at.
func startPair(t *testing.T, newPair PairFactory, at time.Time) (*env, *env) {
	t.Helper()
	a, b, clk := newPair(t)
	clk.Set(at)
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	ctx := context.Background()
	return &env{t: t, b: a, clk: clk, ctx: ctx}, &env{t: t, b: b, clk: clk, ctx: ctx}
}

func testSettleElsewhere(t *testing.T, f PairFactory) {
	a, b := startPair(t, f, t0)
	chain := []quota.Scope{sc("global", nil), sc("t/a", &quota.Limits{Concurrency: quota.AtMost(1)})}
	r := req(quota.Ask{Tokens: 500, GPUMillis: 40, CostMicros: 70, Concurrency: true}, chain...)
	r.Meta, r.TTL = `{"owner":"usr_1"}`, time.Minute
	tk := a.acquire(r)

	info, err := b.b.Lookup(b.ctx, tk.ID)
	want := quota.TicketInfo{ID: tk.ID, Meta: r.Meta, ExpiresAt: t0.Add(time.Minute), Tokens: 500, GPUMillis: 40, CostMicros: 70}
	if err != nil || !sameInfo(info, want) {
		t.Fatalf("Lookup elsewhere: got %+v, %v, want %+v", info, err, want)
	}
	b.advance(50 * time.Second)
	exp, err := b.b.Heartbeat(b.ctx, tk.ID, time.Minute)
	if err != nil || !exp.Equal(b.now().Add(time.Minute)) {
		t.Fatalf("Heartbeat elsewhere: got %v, %v, want %v", exp, err, b.now().Add(time.Minute))
	}
	b.advance(30 * time.Second) // past the first expiry, within the heartbeat's
	a.deny(r)                   // the slot is still held, as seen from a
	s := b.settle(tk.ID, quota.Usage{InputTokens: 100, OutputTokens: 50, GPUMillis: 10, CostMicros: 20})
	if s.Meta != r.Meta || s.Late || s.ReservedTokens != 500 {
		t.Errorf("settlement elsewhere: got %+v, want meta %q, reserved 500, not late", s, r.Meta)
	}
	a.wantUsed("t/a", used{150, 150, 10, 20, 0})
	if again := a.settle(tk.ID, quota.Usage{InputTokens: 9}); !sameSettlement(again, s) || !again.Replay {
		t.Errorf("replay on the issuer: got %+v, want %+v", again, s)
	}
	if info, err := a.b.Lookup(a.ctx, tk.ID); err != nil || !info.Settled || info.Meta != r.Meta {
		t.Errorf("Lookup settled on the issuer: got %+v, %v, want settled with meta", info, err)
	}
	if _, err := a.b.Heartbeat(a.ctx, tk.ID, time.Minute); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("Heartbeat settled: got %v, want ErrUnknownTicket", err)
	}
	a.acquire(r) // the slot is free
}

func testLateSettleElsewhere(t *testing.T, f PairFactory) {
	a, b := startPair(t, f, t0)
	chain := []quota.Scope{sc("global", nil), sc("t/a", &quota.Limits{TokensDay: quota.AtMost(1000)})}
	r := req(quota.Ask{Tokens: 800}, chain...)
	r.Meta, r.TTL = "late", time.Minute
	tk := a.acquire(r)
	a.advance(2 * time.Minute)
	a.wantUsed("t/a", used{})
	info, err := b.b.Lookup(b.ctx, tk.ID)
	if err != nil || !info.Expired || info.Meta != "late" {
		t.Fatalf("Lookup expired elsewhere: got %+v, %v, want expired with meta", info, err)
	}
	s := b.settle(tk.ID, quota.Usage{OutputTokens: 300})
	if !s.Late || s.Meta != "late" || s.ReservedTokens != 800 {
		t.Errorf("late settlement elsewhere: got %+v, want late with meta and reserved 800", s)
	}
	a.wantUsed("t/a", used{300, 300, 0, 0, 0})
	if again := a.settle(tk.ID, quota.Usage{}); !sameSettlement(again, s) {
		t.Errorf("replay of a late settle on the issuer: got %+v, want %+v", again, s)
	}
	a.wantUsed("t/a", used{300, 300, 0, 0, 0})
}
