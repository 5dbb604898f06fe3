package leasequota_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
)

// batchRounds are two rounds of grants on three scopes of tenant ten_a:
// rate leases, direct rate decisions (one undone by a budget refusal in
// the same call), budgets with pins, slots, a read-only want and a min
// that cannot be met.
func batchRounds() [][]leasequota.BatchCall {
	tr := quota.Rate{Limit: 90_000, Period: time.Minute}
	var rounds [][]leasequota.BatchCall
	for r := range 2 {
		p := "r" + string(rune('1'+r)) + ":"
		rounds = append(rounds, []leasequota.BatchCall{
			{RequestID: p + "a", Key: "tenant/ten_a", Wants: []leasequota.Want{
				{Meter: leasequota.MeterRequests, Amount: 20, Rate: rpm},
				{Meter: leasequota.MeterTokensDay, Amount: 300, Limit: 1000, Window: day, Pin: 10, PinSeq: uint64(r + 1)},
				{Meter: leasequota.MeterConcurrency, Amount: 2, Limit: 5},
			}},
			{RequestID: p + "b", Key: "project/p1", Wants: []leasequota.Want{
				{Meter: leasequota.MeterRequests, Amount: 3, Min: 1, Rate: rpm, Direct: true},
				{Meter: leasequota.MeterTokensRate, Amount: 5000, Rate: tr},
				{Meter: leasequota.MeterTokensMonth, Amount: 700, Min: 600, Limit: 1000, Window: day},
			}},
			{RequestID: p + "c", Key: "user/u1", Wants: []leasequota.Want{
				{Meter: leasequota.MeterTokensDay, Limit: 50, Window: day},
				{Meter: leasequota.MeterConcurrency, Amount: 10, Min: 10, Limit: 5},
				{Meter: leasequota.MeterRequests, Amount: 40, Rate: rpm},
			}},
		})
	}
	return rounds
}

// TestGrantBatchAsGrants: a batch gives each call what Grant gives it sent
// alone, in order, and leaves the same state; sent again with its ids,
// each call replays and nothing changes.
func TestGrantBatchAsGrants(t *testing.T) {
	clk := newClock()
	c := newClient(t)
	one, batch := newStore(t, c, clk, leasequota.Options{}), newStore(t, c, clk, leasequota.Options{})
	ctx := context.Background()
	for r, calls := range batchRounds() {
		want := make([]leasequota.GrantResult, len(calls))
		for i, bc := range calls {
			g, err := one.Grant(ctx, bc.RequestID, "a", leasequota.Scope{Tenant: "ten_a", Key: bc.Key}, time.Minute, bc.Wants)
			if err != nil {
				t.Fatalf("round %d: Grant %s: %v", r, bc.RequestID, err)
			}
			want[i] = g
		}
		got, err := batch.GrantBatch(ctx, "a", "ten_a", time.Minute, calls)
		if err != nil {
			t.Fatalf("round %d: GrantBatch: %v", r, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("round %d: got %+v, want %+v (sequential Grants)", r, got, want)
		}
		for _, bc := range calls {
			sc := leasequota.Scope{Tenant: "ten_a", Key: bc.Key}
			if g, w := mustRead(t, batch, sc), mustRead(t, one, sc); !reflect.DeepEqual(g, w) {
				t.Errorf("round %d: %s state %+v, want %+v", r, bc.Key, g, w)
			}
		}
		clk.Advance(100 * time.Millisecond)
	}

	// Replay: the last round again with its ids, and a fresh call.
	calls := batchRounds()[1]
	before := mustRead(t, batch, leasequota.Scope{Tenant: "ten_a", Key: "tenant/ten_a"})
	first, err := one.GrantBatch(ctx, "a", "ten_a", time.Minute, calls) // replays the Grants of one
	if err != nil {
		t.Fatal(err)
	}
	fresh := leasequota.BatchCall{RequestID: "r3:a", Key: "tenant/ten_a", Wants: []leasequota.Want{{Meter: leasequota.MeterConcurrency, Amount: 1, Limit: 5}}}
	again, err := batch.GrantBatch(ctx, "a", "ten_a", time.Minute, append(calls, fresh))
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range again[:len(calls)] {
		if !g.Replay || !first[i].Replay {
			t.Fatalf("call %d: got Replay %v / %v, want true for an id already carried out", i, g.Replay, first[i].Replay)
		}
		if !reflect.DeepEqual(g, first[i]) {
			t.Errorf("call %d: replay got %+v, want %+v", i, g, first[i])
		}
		for j, x := range g.Grants {
			if x.Before != "" || x.After != "" {
				t.Errorf("call %d want %d: replay got buckets %q→%q, want none", i, j, x.Before, x.After)
			}
		}
	}
	if f := again[len(calls)]; f.Replay || f.Grants[0].Granted != 1 {
		t.Errorf("fresh call in a replayed batch got %+v, want 1 slot granted", f)
	}
	after := mustRead(t, batch, leasequota.Scope{Tenant: "ten_a", Key: "tenant/ten_a"})
	if got, want := after.Meters[leasequota.MeterConcurrency].Used, before.Meters[leasequota.MeterConcurrency].Used+1; got != want {
		t.Errorf("slots used %d after the replay, want %d (only the fresh call's)", got, want)
	}
	if got, want := after.Meters[leasequota.MeterTokensDay].Used, before.Meters[leasequota.MeterTokensDay].Used; got != want {
		t.Errorf("tokens used %d after the replay, want %d", got, want)
	}
}

// hooked runs before each script sent through it, with the script's keys.
type hooked struct {
	redis.Scripter
	mu     sync.Mutex
	before func(keys []string)
}

func (h *hooked) hook(keys []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.before != nil {
		h.before(keys)
	}
}

func (h *hooked) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	h.hook(keys)
	return h.Scripter.Eval(ctx, script, keys, args...)
}

func (h *hooked) EvalSha(ctx context.Context, sha string, keys []string, args ...any) *redis.Cmd {
	h.hook(keys)
	return h.Scripter.EvalSha(ctx, sha, keys, args...)
}

// TestGrantBatchConflict: a rate bucket another instance changes between
// the batch's read and its script sends that scope's call, and only it,
// back to be read and decided again; the other calls go through at once.
func TestGrantBatchConflict(t *testing.T) {
	clk := newClock()
	c := newClient(t)
	h := &hooked{Scripter: c}
	s := newStore(t, h, clk, leasequota.Options{})
	other, err := leasequota.NewStore(c, leasequota.Options{Prefix: prefixOf(t, s), Clock: clk.Now, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	x := leasequota.Scope{Tenant: "ten_a", Key: "project/x"}
	var (
		reads   [][]string // the state keys of each rates read
		scripts []int      // the calls of each grant script
		cut     leasequota.GrantResult
	)
	h.before = func(keys []string) {
		last := keys[len(keys)-1]
		if !strings.HasSuffix(last, ":epoch") {
			reads = append(reads, keys)
			return
		}
		if len(scripts) > 0 && len(keys) == 5*scripts[len(scripts)-1]+2 && len(reads) == len(scripts) {
			return // the same script again, by EVAL after NOSCRIPT
		}
		scripts = append(scripts, (len(keys)-2)/5)
		if len(scripts) == 1 {
			// Between the read and the script: another instance decides
			// on x's requests bucket.
			var err error
			if cut, err = other.Grant(ctx, "other", "b", x, time.Minute, []leasequota.Want{{Meter: leasequota.MeterRequests, Amount: 5, Rate: rpm, Direct: true}}); err != nil {
				t.Error(err)
			}
		}
	}
	calls := []leasequota.BatchCall{
		{RequestID: "g1", Key: "project/x", Wants: []leasequota.Want{{Meter: leasequota.MeterRequests, Amount: 10, Rate: rpm}}},
		{RequestID: "g2", Key: "project/y", Wants: []leasequota.Want{{Meter: leasequota.MeterRequests, Amount: 10, Rate: rpm}}},
		{RequestID: "g3", Key: "project/z", Wants: []leasequota.Want{{Meter: leasequota.MeterTokensDay, Amount: 100, Limit: 1000, Window: day}}},
	}
	res, err := s.GrantBatch(ctx, "a", "ten_a", time.Minute, calls)
	if err != nil {
		t.Fatal(err)
	}
	h.before = nil
	if cut.Grants == nil || cut.Grants[0].Granted != 5 {
		t.Fatalf("the other instance got %+v, want 5 units", cut)
	}
	wantReads := [][]string{{s.Tag("ten_a") + ":s:project/x", s.Tag("ten_a") + ":s:project/y"}, {s.Tag("ten_a") + ":s:project/x"}}
	if !reflect.DeepEqual(reads, wantReads) || !reflect.DeepEqual(scripts, []int{3, 1}) {
		t.Fatalf("got reads %v and scripts of %v calls, want reads %v and scripts of [3 1] calls", reads, scripts, wantReads)
	}
	gx, gy := res[0].Grants[0], res[1].Grants[0]
	if gx.Before != cut.Grants[0].After || gx.Granted != 10 {
		t.Errorf("x got %+v, want 10 units decided on the bucket the other instance left (%q)", gx, cut.Grants[0].After)
	}
	if gy.Before != "" || gy.Granted != 10 {
		t.Errorf("y got %+v, want 10 units from an unused bucket", gy)
	}
	if got := mustRead(t, s, x).Meters[leasequota.MeterRequests].Bucket.String(); got != gx.After {
		t.Errorf("x's bucket %q, want the batch's %q", got, gx.After)
	}
	if g := res[2].Grants[0]; g.Granted != 100 || g.Used != 100 {
		t.Errorf("z got %+v, want 100 tokens", g)
	}
}

// TestGrantBatchErrors: malformed batches are ErrInvalid; a tag without
// its epoch refuses the whole batch with ErrEpochLost.
func TestGrantBatchErrors(t *testing.T) {
	s := newStore(t, newClient(t), newClock(), leasequota.Options{RequireEpoch: true})
	ctx := context.Background()
	ok := []leasequota.Want{{Meter: leasequota.MeterConcurrency, Amount: 1, Limit: 5}}
	for i, calls := range [][]leasequota.BatchCall{
		nil,
		{{RequestID: "", Key: "k", Wants: ok}},
		{{RequestID: "a", Key: "", Wants: ok}},
		{{RequestID: "a", Key: "k"}},
		{{RequestID: "a", Key: "k", Wants: ok}, {RequestID: "b", Key: "l", Wants: []leasequota.Want{{Meter: leasequota.MeterRequests, Amount: 1}}}},
	} {
		if _, err := s.GrantBatch(ctx, "i", "ten_a", time.Minute, calls); !errors.Is(err, quota.ErrInvalid) {
			t.Errorf("%d: got %v, want ErrInvalid", i, err)
		}
	}
	if _, err := s.GrantBatch(ctx, "i", "ten_a", time.Minute, []leasequota.BatchCall{{RequestID: "a", Key: "k", Wants: ok}}); !errors.Is(err, leasequota.ErrEpochLost) {
		t.Errorf("without epoch: got %v, want ErrEpochLost", err)
	}
}
