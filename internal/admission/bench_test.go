package admission

import (
	"context"
	"strconv"
	"testing"
)

// BenchmarkUncontended is what the queue adds to an admission that finds
// a slot: one look for waiters on the chain's scopes.
func BenchmarkUncontended(b *testing.B) {
	q := New(Options{})
	a := Arrival{Scopes: []string{"global", "tenant/t", "department/d", "project/p", "user/u", "membership/u@p"}, Flow: "u"}
	ok := func() (string, error) { return "", nil }
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := q.Do(ctx, a, ok); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkQueueOps is the queue's own work per waiter served, under its
// lock: a waiter joins, the next in fair order is taken for a turn and
// leaves admitted, with 256 waiters of 64 users standing in the queue.
func BenchmarkQueueOps(b *testing.B) {
	q := New(Options{MaxQueue: 1 << 20, MaxPerFlow: 1 << 20})
	flows := make([]string, 64)
	for i := range flows {
		flows[i] = "u" + strconv.Itoa(i)
	}
	for i := range 256 { // a standing queue
		if _, _, err := q.enter("s", Arrival{Flow: flows[i%64]}); err != nil {
			b.Fatal(err)
		}
	}
	sq := q.scopes["s"]
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		q.mu.Lock()
		q.seq++
		sq.fq.push(&waiter{flow: flows[i%64]}, q.seq)
		w := sq.fq.take()
		sq.fq.done(w)
		q.mu.Unlock()
	}
}
