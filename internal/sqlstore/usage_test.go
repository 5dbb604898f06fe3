package sqlstore

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/usage"
)

// The usage write path on both engines: idempotent batches, data errors
// told apart from outages, quarantine through a recorder, and many
// committers at once. (testUsage in postgres_test.go covers the basics.)

// wantRollups sums events (each id once) per scope and period, as the
// store must.
func wantRollups(events []usage.Event) map[rollupKey]usage.Rollup {
	out := map[rollupKey]usage.Rollup{}
	seen := map[string]bool{}
	for _, e := range events {
		if seen[e.ID] {
			continue
		}
		seen[e.ID] = true
		for _, scope := range e.Scopes {
			loc := e.Loc
			if loc == nil || scope == "global" {
				loc = time.UTC
			}
			for _, p := range []string{usage.DayPeriod(e.At, loc), usage.MonthPeriod(e.At, loc)} {
				k := rollupKey{scope, p}
				r, ok := out[k]
				if !ok {
					r = usage.Rollup{Scope: scope, Period: p, TenantID: e.TenantID}
				}
				r.Requests += e.Requests
				r.Tokens += e.Tokens()
				r.GPUMillis += e.GPUMillis
				r.CostMicros += e.CostMicros
				out[k] = r
			}
		}
	}
	return out
}

// checkStored checks that the store holds exactly events (each id once)
// and roll-ups that are their sums. Roll-up tenants are not compared:
// concurrent writers race for which event creates a row.
func checkStored(t *testing.T, s *Store, events []usage.Event) {
	t.Helper()
	ctx := context.Background()
	want := wantRollups(events)
	ids := map[string]bool{}
	for _, e := range events {
		ids[e.ID] = true
	}
	var n, distinct int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*), COUNT(DISTINCT id) FROM usage_events`).Scan(&n, &distinct); err != nil {
		t.Fatalf("count usage events: %v", err)
	}
	if n != len(ids) || distinct != len(ids) {
		t.Fatalf("usage_events: got %d rows (%d distinct ids), want %d", n, distinct, len(ids))
	}
	stored, err := s.UsageEvents(ctx, "", time.Time{}, time.Now().Add(24*time.Hour), 1_000_000)
	if err != nil {
		t.Fatalf("UsageEvents = %v", err)
	}
	for _, e := range stored {
		if !ids[e.ID] {
			t.Fatalf("usage_events holds %s, which was not committed", e.ID)
		}
	}
	periods := map[string]bool{}
	for k := range want {
		periods[k.period] = true
	}
	rs, err := s.Rollups(ctx, slices.Collect(func(yield func(string) bool) {
		for p := range periods {
			if !yield(p) {
				return
			}
		}
	}))
	if err != nil {
		t.Fatalf("Rollups = %v", err)
	}
	if len(rs) != len(want) {
		t.Fatalf("roll-ups: got %d, want %d", len(rs), len(want))
	}
	for _, r := range rs {
		w := want[rollupKey{r.Scope, r.Period}]
		r.TenantID, w.TenantID = "", ""
		if r != w {
			t.Fatalf("roll-up %s %s: got %+v, want %+v", r.Scope, r.Period, r, w)
		}
	}
}

func TestUsageWrites(t *testing.T) {
	for _, eng := range usageEngines {
		t.Run(eng.name, func(t *testing.T) {
			t.Parallel()
			t.Run("replays", func(t *testing.T) { t.Parallel(); testUsageReplays(t, eng.open(t)) })
			t.Run("data errors", func(t *testing.T) { t.Parallel(); testUsageDataErrors(t, eng.name, eng.open(t)) })
			t.Run("quarantine", func(t *testing.T) { t.Parallel(); testUsageQuarantine(t, eng.name, eng.open(t)) })
			t.Run("64 committers", func(t *testing.T) { t.Parallel(); testUsageCommitters(t, eng.open(t)) })
			t.Run("events exist", func(t *testing.T) { t.Parallel(); testEventsExist(t, eng.open(t)) })
			t.Run("read moment", func(t *testing.T) { t.Parallel(); testRollupsRead(t, eng.open(t)) })
		})
	}
}

func testUsageReplays(t *testing.T, s *Store) {
	ctx := context.Background()
	at := time.Date(2026, 3, 10, 20, 0, 0, 0, time.UTC) // the 11th in Shanghai
	var batch []usage.Event
	for i := 0; i < 10; i++ {
		batch = append(batch, realEvent(fmt.Sprintf("tkt_%d", i), i, at))
	}
	if n, err := s.RecordUsage(ctx, batch); err != nil || n != 10 {
		t.Fatalf("RecordUsage = %d, %v, want 10, nil", n, err)
	}
	// The same batch again, and a batch repeating ids within itself and
	// from before: only the one new id counts.
	if n, err := s.RecordUsage(ctx, batch); err != nil || n != 0 {
		t.Fatalf("RecordUsage(replay) = %d, %v, want 0, nil", n, err)
	}
	extra := realEvent("tkt_10", 10, at)
	if n, err := s.RecordUsage(ctx, []usage.Event{batch[3], extra, extra, batch[0], extra}); err != nil || n != 1 {
		t.Fatalf("RecordUsage(repeats) = %d, %v, want 1, nil", n, err)
	}
	if n, err := s.RecordUsage(ctx, nil); err != nil || n != 0 {
		t.Fatalf("RecordUsage(nothing) = %d, %v, want 0, nil", n, err)
	}
	checkStored(t, s, append(batch, extra))
}

func testUsageDataErrors(t *testing.T, engine string, s *Store) {
	ctx := context.Background()
	at := time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)
	good := realEvent("tkt_good", 1, at)
	bad := map[string]usage.Event{}
	for _, f := range []string{"id", "model", "tenant"} {
		e := realEvent("tkt_"+f, 2, at)
		long := strings.Repeat("x", maxEventText+1)
		switch f {
		case "id":
			e.ID = "tkt_" + long
		case "model":
			e.Model = long
		case "tenant":
			e.TenantID = long
		}
		bad["oversize "+f] = e
	}
	if engine == "postgres" {
		e := realEvent("tkt_nul", 3, at)
		e.Model = "gpt\x00-4o"
		bad["NUL in model"] = e
		e = realEvent("tkt_utf8", 4, at)
		e.UserID = "usr_\xff"
		bad["invalid UTF-8"] = e
	}
	for name, e := range bad {
		_, err := s.RecordUsage(ctx, []usage.Event{good, e})
		if !errs.Is(err, errs.Invalid) {
			t.Errorf("RecordUsage with %s: got %v, want errs.Invalid", name, err)
		}
	}
	// Nothing of a refused batch was written.
	checkStored(t, s, nil)
	if n, err := s.RecordUsage(ctx, []usage.Event{good}); err != nil || n != 1 {
		t.Fatalf("RecordUsage(good) = %d, %v, want 1, nil", n, err)
	}
	// An outage is not the data's fault.
	closed := s
	if err := closed.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if _, err := closed.RecordUsage(ctx, []usage.Event{realEvent("tkt_late", 5, at)}); err == nil || errs.Is(err, errs.Invalid) {
		t.Fatalf("RecordUsage on a closed store: got %v, want an error other than errs.Invalid", err)
	}
}

func testUsageQuarantine(t *testing.T, engine string, s *Store) {
	ctx := context.Background()
	r := usage.NewRecorder(s, slog.New(slog.DiscardHandler), time.Hour, usage.WithChunk(16))
	defer r.Close()
	at := time.Now().UTC()
	poison := func(i int) (usage.Event, bool) {
		e := realEvent(fmt.Sprintf("tkt_%03d", i), i, at)
		switch {
		case i%37 == 5:
			e.Model = strings.Repeat("m", 5000) // too long for either store
			return e, true
		case engine == "postgres" && i%41 == 7:
			e.Model = "gpt\x00-4o" // PostgreSQL cannot hold NUL (SQLSTATE 22021)
			return e, true
		}
		return e, false
	}
	// Queue a first lot without waiting, so that poison and good events
	// share chunks, then commit more behind them.
	var good, bad []usage.Event
	for i := 0; i < 100; i++ {
		e, isBad := poison(i)
		if isBad {
			bad = append(bad, e)
		} else {
			good = append(good, e)
		}
		r.Record(e)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 100 + w; i < 300; i += 8 {
				e, isBad := poison(i)
				err := r.Commit(ctx, e)
				mu.Lock()
				switch {
				case isBad && !errs.Is(err, errs.Invalid):
					t.Errorf("Commit of poison event %s: got %v, want errs.Invalid", e.ID, err)
				case !isBad && err != nil:
					t.Errorf("Commit of event %s = %v, want nil", e.ID, err)
				case isBad:
					bad = append(bad, e)
				default:
					good = append(good, e)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := r.Flush(ctx); err != nil {
		t.Fatalf("Flush = %v", err)
	}
	checkStored(t, s, good)

	// A poison event replayed is quarantined once.
	if err := r.Commit(ctx, bad[0]); !errs.Is(err, errs.Invalid) {
		t.Fatalf("Commit of a replayed poison event: got %v, want errs.Invalid", err)
	}
	q, err := s.UsageQuarantine(ctx, "", 1000)
	if err != nil {
		t.Fatalf("UsageQuarantine = %v", err)
	}
	var got, want []string
	for _, x := range q {
		got = append(got, x.EventID)
		if x.Error == "" || !strings.HasPrefix(x.Event, "{") || x.At.IsZero() {
			t.Errorf("quarantined %s: got %+v, want the event, the error and the time", x.EventID, x)
		}
		if strings.ContainsRune(x.Event, 0) {
			t.Errorf("quarantined %s holds a NUL: %q", x.EventID, x.Event)
		}
	}
	for _, e := range bad {
		want = append(want, e.ID)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("quarantined events: got %v, want %v", got, want)
	}
	if engine == "postgres" && !slices.ContainsFunc(q, func(x usage.Quarantined) bool { return strings.Contains(x.Event, `gpt\\x00-4o`) }) {
		t.Errorf("quarantine lacks the NUL event's escaped model")
	}
	// Paging: after the first, the rest.
	if len(q) > 1 {
		rest, err := s.UsageQuarantine(ctx, q[0].ID, 1000)
		if err != nil || len(rest) != len(q)-1 {
			t.Fatalf("UsageQuarantine(after first) = %d, %v, want %d, nil", len(rest), err, len(q)-1)
		}
	}
}

// testUsageCommitters commits from 64 goroutines at once, each event once
// and some again (as retried settles): every committed event is stored
// exactly once and the roll-ups are the sums of the events.
func testUsageCommitters(t *testing.T, s *Store) {
	ctx := context.Background()
	r := usage.NewRecorder(s, slog.New(slog.DiscardHandler), time.Hour)
	defer r.Close()
	const clients, each = 64, 25
	at := time.Now().UTC()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var all []usage.Event
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []usage.Event
			for i := 0; i < each; i++ {
				n := c*each + i
				e := realEvent(fmt.Sprintf("tkt_%d", n), n, at)
				if i%7 == 3 && len(mine) > 0 {
					e = mine[len(mine)/2] // a replay
				}
				if err := r.Commit(ctx, e); err != nil {
					t.Errorf("Commit(%s) = %v, want nil", e.ID, err)
					return
				}
				mine = append(mine, e)
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	// Every Commit returned: everything is stored, without a Flush.
	checkStored(t, s, all)
}

// crash drops s as a killed process would: the database closed, the use
// of committed events still pending in memory never folded into the
// roll-ups.
func crash(t *testing.T, s *Store) {
	t.Helper()
	s.roll.mu.Lock()
	s.roll.closed = true
	if s.roll.idle != nil {
		s.roll.idle.Stop()
	}
	s.roll.mu.Unlock()
	if err := errors.Join(s.stopCheckpoint(), s.w.Close(), s.r.Close()); err != nil {
		t.Fatalf("close = %v", err)
	}
}

// storedRollupRows counts the rows of usage_rollups, pending use aside.
func storedRollupRows(t *testing.T, s *Store) int {
	t.Helper()
	var n int
	if err := s.r.QueryRow(`SELECT COUNT(*) FROM usage_rollups`).Scan(&n); err != nil {
		t.Fatalf("count roll-ups: %v", err)
	}
	return n
}

// TestUsageRollupsAfterCrash: on SQLite the roll-ups trail the events. A
// crash at any point between folds leaves events whose use is in no
// roll-up; opening the store again folds them, so the roll-ups are the sum
// of the events and a replay of everything changes nothing.
func TestUsageRollupsAfterCrash(t *testing.T) {
	at := time.Date(2026, 3, 31, 20, 0, 0, 0, time.UTC) // April 1st in Shanghai
	batches := make([][]usage.Event, 7)
	var all []usage.Event
	for b := range batches {
		for i := 0; i < 40; i++ {
			n := b*40 + i
			e := realEvent(fmt.Sprintf("tkt_%d", n), n, at.Add(time.Duration(n)*time.Minute))
			batches[b] = append(batches[b], e)
			all = append(all, e)
		}
	}
	for _, tc := range []struct {
		name string
		// before runs before batch b is written, but the last.
		before func(t *testing.T, s *Store, b int)
	}{
		{"nothing folded", func(t *testing.T, s *Store, b int) {}},
		{"folded by a read midway", func(t *testing.T, s *Store, b int) {
			if b == 3 {
				if _, err := s.Rollups(context.Background(), []string{"2026-03"}); err != nil {
					t.Fatalf("Rollups = %v", err)
				}
			}
		}},
		{"folded by writes", func(t *testing.T, s *Store, b int) {
			s.roll.mu.Lock()
			s.roll.every = 0 // each write folds what the one before left
			s.roll.mu.Unlock()
		}},
		{"folded by size", func(t *testing.T, s *Store, b int) {
			s.roll.mu.Lock()
			s.roll.maxKeys = 500
			s.roll.mu.Unlock()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "s.db")
			s, err := OpenSQLite(ctx, path)
			if err != nil {
				t.Fatalf("OpenSQLite = %v", err)
			}
			for b, batch := range batches {
				if b < len(batches)-1 {
					tc.before(t, s, b)
				} else { // the last batch stays pending
					s.roll.mu.Lock()
					s.roll.every, s.roll.maxKeys = time.Hour, foldMaxKeys
					s.roll.mu.Unlock()
				}
				if n, err := s.RecordUsage(ctx, batch); err != nil || n != len(batch) {
					t.Fatalf("RecordUsage(batch %d) = %d, %v, want %d, nil", b, n, err, len(batch))
				}
			}
			if got, all := storedRollupRows(t, s), len(wantRollups(all)); got >= all {
				t.Fatalf("before the crash: got %d roll-up rows, want fewer than %d (some use pending)", got, all)
			}
			crash(t, s)

			s, err = OpenSQLite(ctx, path)
			if err != nil {
				t.Fatalf("OpenSQLite after the crash = %v", err)
			}
			defer s.Close()
			if got, want := storedRollupRows(t, s), len(wantRollups(all)); got != want {
				t.Fatalf("after open: got %d roll-up rows, want %d", got, want)
			}
			checkStored(t, s, all)
			var mark, last int64
			if err := s.r.QueryRow(`SELECT (SELECT last_rowid FROM usage_rollup_mark), (SELECT MAX(rowid) FROM usage_events)`).
				Scan(&mark, &last); err != nil || mark != last {
				t.Fatalf("mark = %d, %v; want the last rowid, %d", mark, err, last)
			}
			for b, batch := range batches {
				if n, err := s.RecordUsage(ctx, batch); err != nil || n != 0 {
					t.Fatalf("RecordUsage(replay of batch %d) = %d, %v, want 0, nil", b, n, err)
				}
			}
			checkStored(t, s, all)
		})
	}
}

// TestUsageRollupsOpenTwice: the fold at open is idempotent: a second open
// (after a crash right after the first) adds nothing.
func TestUsageRollupsOpenTwice(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatalf("OpenSQLite = %v", err)
	}
	at := time.Now().UTC()
	var events []usage.Event
	for i := 0; i < 50; i++ {
		events = append(events, realEvent(fmt.Sprintf("tkt_%d", i), i, at))
	}
	if _, err := s.RecordUsage(ctx, events); err != nil {
		t.Fatalf("RecordUsage = %v", err)
	}
	crash(t, s)
	for i := 0; i < 2; i++ {
		if s, err = OpenSQLite(ctx, path); err != nil {
			t.Fatalf("OpenSQLite = %v", err)
		}
		crash(t, s)
	}
	if s, err = OpenSQLite(ctx, path); err != nil {
		t.Fatalf("OpenSQLite = %v", err)
	}
	defer s.Close()
	checkStored(t, s, events)
}

// TestUsageKilled kills (SIGKILL) a process committing usage events
// through a recorder on SQLite, at a moment it does not choose, three
// times over the same database: every acknowledged event is stored, and
// once the store is open again the roll-ups are exactly the sum of the
// stored events.
func TestUsageKilled(t *testing.T) {
	if path := os.Getenv("SLUICE_TEST_USAGE_KILLED_DB"); path != "" {
		usageKilledChild(path)
		return
	}
	if testing.Short() {
		t.Skip("starts child processes")
	}
	path := filepath.Join(t.TempDir(), "s.db")
	acked := map[string]bool{}
	for round := 0; round < 3; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestUsageKilled$")
		cmd.Env = append(os.Environ(), "SLUICE_TEST_USAGE_KILLED_DB="+path, fmt.Sprintf("SLUICE_TEST_USAGE_KILLED_ROUND=%d", round))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatalf("start child: %v", err)
		}
		// Kill after some acknowledgements, between 200 and 2,000 of them.
		sc := bufio.NewScanner(out)
		killAt := 200 + rand.IntN(1800)
		n := 0
		for sc.Scan() {
			acked[sc.Text()] = true
			if n++; n == killAt {
				_ = cmd.Process.Kill()
			}
		}
		if err := cmd.Wait(); err == nil || n < killAt {
			t.Fatalf("round %d: child ended with %v after %d acknowledgements, want killed after %d", round, err, n, killAt)
		}
	}
	s, err := OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatalf("OpenSQLite = %v", err)
	}
	defer s.Close()
	stored, err := s.UsageEvents(context.Background(), "", time.Time{}, time.Now().Add(48*time.Hour), 10_000_000)
	if err != nil {
		t.Fatalf("UsageEvents = %v", err)
	}
	var events []usage.Event
	have := map[string]bool{}
	for _, e := range stored {
		have[e.ID] = true
		var round, n int
		if _, err := fmt.Sscanf(e.ID, "tkt_%d_%d", &round, &n); err != nil {
			t.Fatalf("stored event %s: %v", e.ID, err)
		}
		events = append(events, killedEvent(round, n))
	}
	for id := range acked {
		if !have[id] {
			t.Fatalf("acknowledged event %s is not stored", id)
		}
	}
	checkStored(t, s, events)
	t.Logf("%d events acknowledged, %d stored", len(acked), len(stored))
}

// killedEvent is the n-th event of a round of TestUsageKilled; its id
// tells which.
func killedEvent(round, n int) usage.Event {
	return realEvent(fmt.Sprintf("tkt_%d_%d", round, n), n, time.Date(2026, 3, 31, 12, 0, 0, 0, time.UTC).Add(time.Duration(n)*time.Second))
}

// usageKilledChild commits events from 16 goroutines until it is killed,
// printing each acknowledged id.
func usageKilledChild(path string) {
	round, _ := strconv.Atoi(os.Getenv("SLUICE_TEST_USAGE_KILLED_ROUND"))
	s, err := OpenSQLite(context.Background(), path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "OpenSQLite:", err)
		os.Exit(2)
	}
	r := usage.NewRecorder(s, slog.New(slog.DiscardHandler), time.Hour)
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				e := killedEvent(round, int(next.Add(1)))
				if err := r.Commit(context.Background(), e); err != nil {
					fmt.Fprintln(os.Stderr, "Commit:", err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Println(e.ID)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestUsageRollupsUpgrade: a database written before migration 0008 holds
// events rolled up in their own transactions, without a local day and
// without a mark. The first open sets the mark past them, so their use is
// not added twice, and later events roll up as usual.
func TestUsageRollupsUpgrade(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatalf("OpenSQLite = %v", err)
	}
	at := time.Date(2026, 3, 31, 20, 0, 0, 0, time.UTC)
	var old, later []usage.Event
	for i := 0; i < 50; i++ {
		old = append(old, realEvent(fmt.Sprintf("tkt_%d", i), i, at))
		later = append(later, realEvent(fmt.Sprintf("tkt_%d", 50+i), 50+i, at))
	}
	if _, err := s.RecordUsage(ctx, old); err != nil {
		t.Fatalf("RecordUsage = %v", err)
	}
	if err := s.Close(); err != nil { // folds: the roll-ups hold old's use
		t.Fatalf("Close = %v", err)
	}
	// As the database was before 0008.
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`DELETE FROM usage_rollup_mark; UPDATE usage_events SET local_day = ''`); err != nil {
		t.Fatalf("undo 0008: %v", err)
	}
	raw.Close()

	if s, err = OpenSQLite(ctx, path); err != nil {
		t.Fatalf("OpenSQLite = %v", err)
	}
	checkStored(t, s, old)
	if _, err := s.RecordUsage(ctx, later); err != nil {
		t.Fatalf("RecordUsage = %v", err)
	}
	crash(t, s)
	if s, err = OpenSQLite(ctx, path); err != nil {
		t.Fatalf("OpenSQLite = %v", err)
	}
	defer s.Close()
	checkStored(t, s, append(old, later...))
}

// TestUsageRollupsRefusedWrite: a write refused after some of its events'
// use went into the pending sums takes that use back.
func TestUsageRollupsRefusedWrite(t *testing.T) {
	ctx := context.Background()
	s := openSQLiteTB(t)
	at := time.Date(2026, 3, 31, 20, 0, 0, 0, time.UTC)
	ev := func(id, scope string, cost int64) usage.Event {
		return usage.Event{ID: id, At: at, TenantID: "ten_a", Requests: 1, InputTokens: 3, CostMicros: cost,
			Scopes: []string{scope}, Loc: shanghai}
	}
	a, b, c := ev("tkt_a", "t/x", math.MaxInt64-10), ev("tkt_b", "t/y", 5), ev("tkt_c", "t/x", 100)
	if _, err := s.RecordUsage(ctx, []usage.Event{a}); err != nil {
		t.Fatalf("RecordUsage(a) = %v", err)
	}
	for _, batch := range [][]usage.Event{{b, c}, {c, b}, {c}} {
		if _, err := s.RecordUsage(ctx, batch); !errs.Is(err, errs.Invalid) {
			t.Fatalf("RecordUsage(%s…) = %v, want errs.Invalid (an overflow)", batch[0].ID, err)
		}
	}
	checkStored(t, s, []usage.Event{a})
	if n, err := s.RecordUsage(ctx, []usage.Event{b}); err != nil || n != 1 {
		t.Fatalf("RecordUsage(b) = %d, %v, want 1, nil", n, err)
	}
	checkStored(t, s, []usage.Event{a, b})
}

// testEventsExist: EventsExist names exactly the ids with an event, across
// its 1,000-id batches.
func testEventsExist(t *testing.T, s *Store) {
	ctx := context.Background()
	at := time.Date(2026, 3, 10, 20, 0, 0, 0, time.UTC)
	var batch []usage.Event
	var ids []string
	for i := range 1500 {
		id := fmt.Sprintf("tkt_ex%d", i)
		ids = append(ids, id)
		if i%3 == 0 {
			batch = append(batch, realEvent(id, i, at))
		}
	}
	if _, err := s.RecordUsage(ctx, batch); err != nil {
		t.Fatal(err)
	}
	got, err := s.EventsExist(ctx, append(ids, "tkt_none", "x' OR '1'='1"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(batch) {
		t.Errorf("EventsExist: got %d ids, want %d", len(got), len(batch))
	}
	for i, id := range ids {
		if got[id] != (i%3 == 0) {
			t.Fatalf("EventsExist[%s] = %v, want %v", id, got[id], i%3 == 0)
		}
	}
	if got, err := s.EventsExist(ctx, nil); err != nil || len(got) != 0 {
		t.Errorf("EventsExist(nil) = %v, %v", got, err)
	}
}

// testRollupsRead: 16 writers commit one-token events while the roll-ups
// are read again and again. Every read holds every event whose commit
// returned before its moment (a rebuild drops the spooled use of exactly
// those: a moment taken after the read's snapshot would drop some the read
// does not hold), and no event whose write began after the read ended.
func testRollupsRead(t *testing.T, s *Store) {
	ctx := context.Background()
	at := time.Now().UTC()
	day := usage.DayPeriod(at, time.UTC)
	const writers, each = 16, 60
	type write struct{ began, done time.Time }
	var mu sync.Mutex
	var writes []write
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				e := usage.Event{ID: fmt.Sprintf("rr_%d_%d", w, i), At: at, TenantID: "ten_r", UserID: "usr_r", Kind: "metering",
					Requests: 1, InputTokens: 1, Scopes: []string{"t/ten_r"}, Loc: time.UTC}
				began := time.Now()
				if _, err := s.RecordUsage(ctx, []usage.Event{e}); err != nil {
					t.Errorf("RecordUsage = %v", err)
					return
				}
				done := time.Now()
				mu.Lock()
				writes = append(writes, write{began, done})
				mu.Unlock()
			}
		}()
	}
	type read struct {
		at, end time.Time
		tokens  int64
	}
	var reads []read
	stop := make(chan struct{})
	go func() { wg.Wait(); close(stop) }()
	for loop := true; loop; {
		select {
		case <-stop:
			loop = false
		default:
		}
		rs, readAt, err := s.RollupsRead(ctx, []string{day})
		if err != nil {
			t.Fatalf("RollupsRead = %v", err)
		}
		r := read{at: readAt, end: time.Now()}
		for _, x := range rs {
			if x.Scope == "t/ten_r" {
				r.tokens += x.Tokens
			}
		}
		reads = append(reads, r)
	}
	wg.Wait()
	if len(writes) != writers*each {
		t.Fatalf("%d writes, want %d", len(writes), writers*each)
	}
	for _, r := range reads {
		var begun, committed int64
		for _, w := range writes {
			if w.began.Before(r.end) {
				begun++
			}
			if w.done.Before(r.at) {
				committed++
			}
		}
		if r.tokens < committed {
			t.Errorf("a read marked %s holds %d events, but %d were committed before its mark: a rebuild would drop %d spooled settlements it does not hold",
				r.at.Format(time.StampMicro), r.tokens, committed, committed-r.tokens)
		}
		if r.tokens > begun {
			t.Errorf("a read holds %d events, but only %d writes began before it ended", r.tokens, begun)
		}
	}
	t.Logf("%d reads during %d writes", len(reads), len(writes))
}
