package sandbox_test

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/sandbox"
)

// BenchmarkRun measures what the sandbox adds to a run: the same 4-node
// flow (chat input, prompt, simulated model, chat output) in process and
// in a pooled worker with a memory cap, one run at a time. It reports the
// median and 99th percentile latency of Service.RunGraph. The worker is
// this test binary, or the sluice binary named by SLUICE_BENCH_WORKER
// (go build -o /tmp/sluice ./cmd/sluice; SLUICE_BENCH_WORKER=/tmp/sluice):
//
//	go test -run xxx -bench Run -benchtime 200x ./internal/sandbox/
//
// Runs start every SLUICE_BENCH_GAP (default 0: back to back, so the
// pool's refills compete with the runs for the CPU). SLUICE_BENCH_CGROUP=none
// runs the workers without cgroups, to tell the cgroup's share.
func BenchmarkRun(b *testing.B) {
	opts := sandbox.Options{Workers: 2}
	if w := os.Getenv("SLUICE_BENCH_WORKER"); w != "" {
		opts.Command = []string{w, "worker"}
	}
	if os.Getenv("SLUICE_BENCH_CGROUP") == "none" {
		opts.CgroupRoot, opts.RunUnenforced = "none", true
	}
	var gap time.Duration
	if g := os.Getenv("SLUICE_BENCH_GAP"); g != "" {
		d, err := time.ParseDuration(g)
		if err != nil {
			b.Fatal(err)
		}
		gap = d
	}
	for _, mode := range []string{"in-process", "sandboxed"} {
		b.Run(mode, func(b *testing.B) {
			st := newStack(b, `{"memory_per_run":"256MiB"}`, opts)
			svc := st.svc
			if mode == "in-process" {
				svc = &run.Service{Store: st.store, Exec: st.exec, Log: st.exec.Log}
			}
			g := parse(b, promptFlow)
			ctx := context.Background()
			time.Sleep(200 * time.Millisecond) // the pool fills
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				out, err := svc.RunGraph(ctx, whoU1, g, run.RunRequest{InputValue: "how do I measure latency?"}, nil)
				d := time.Since(start)
				if err != nil || out.Err != nil {
					b.Fatalf("run: %v %v", err, out.Err)
				}
				if mode == "sandboxed" && out.Record.MemoryEnforced != (st.sb.Mode() != sandbox.ModeNone) {
					b.Fatalf("memory_enforced %v in mode %s", out.Record.MemoryEnforced, st.sb.Mode())
				}
				lat = append(lat, d)
				if gap > d {
					time.Sleep(gap - d)
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
