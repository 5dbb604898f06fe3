package run_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/run"
)

// The benchmarks run testdata/bench-4-node.json (ChatInput → Prompt →
// LanguageModelComponent → ChatOutput) on the simulated model with no
// latency, so what they measure is Sluice: parsing nothing (the graph is
// cached), admission and settlement of the run and of its model call
// through the meter and the in-memory quota engine, the usage events, the
// run record and chat messages in SQLite, and the simulated model's token
// counting.
const benchInput = "What is a vector database, and when should I use one?"

func benchHarness(b *testing.B) (*harness, *run.Flow) {
	b.Helper()
	h := newHarness(b)
	fl := h.upload(readFile(b, "testdata/bench-4-node.json"), "bench")
	// One run warms the tokenizer and the parsed-graph cache.
	if out, err := h.svc.Run(h.member, fl.ID, run.RunRequest{InputValue: benchInput}, nil); err != nil || out.Err != nil {
		b.Fatalf("warm-up run: %v %v", err, out.Err)
	}
	return h, fl
}

func reportRuns(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "runs/s")
}

// BenchmarkRunInProcess runs the flow through Service.Run (admission, run
// record, execution, settlement) and, for comparison, Executor.Execute
// alone (execution with its metered model call, no run record).
func BenchmarkRunInProcess(b *testing.B) {
	b.Run("Service.Run", func(b *testing.B) {
		h, fl := benchHarness(b)
		b.ReportAllocs()
		for b.Loop() {
			out, err := h.svc.Run(h.member, fl.ID, run.RunRequest{InputValue: benchInput}, nil)
			if err != nil || out.Err != nil {
				b.Fatalf("run: %v %v", err, out.Err)
			}
		}
		reportRuns(b)
	})
	b.Run("Service.Run_parallel", func(b *testing.B) {
		h, fl := benchHarness(b)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				out, err := h.svc.Run(h.member, fl.ID, run.RunRequest{InputValue: benchInput}, nil)
				if err != nil || out.Err != nil {
					b.Errorf("run: %v %v", err, out.Err)
					return
				}
			}
		})
		reportRuns(b)
	})
	b.Run("Executor.Execute", func(b *testing.B) {
		h, _ := benchHarness(b)
		f := parseFlow(b, readFile(b, "testdata/bench-4-node.json"))
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := h.exec.Execute(ctx, h.job(f, benchInput)); err != nil {
				b.Fatal(err)
			}
		}
		reportRuns(b)
	})
}

// BenchmarkRunHTTP runs the flow through POST /api/v1/run/{endpoint} on an
// httptest server, with a keep-alive client: authentication, JSON in and
// out, and everything BenchmarkRunInProcess measures.
func BenchmarkRunHTTP(b *testing.B) {
	h, _ := benchHarness(b)
	srv := &httpapi.Server{Tenancy: h.ten, Policy: h.pol, Meter: h.meter, Runs: h.svc, MaxBodyBytes: 1 << 20,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ts := httptest.NewServer(srv.Handler())
	b.Cleanup(ts.Close)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.Cleanup(client.CloseIdleConnections)
	const body = `{"input_value":"` + benchInput + `","input_type":"chat","output_type":"chat"}`
	post := func() error {
		req, err := http.NewRequest("POST", ts.URL+"/api/v1/run/bench", strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+h.apiKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("run answered %s", resp.Status)
		}
		return nil
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := post(); err != nil {
				b.Fatal(err)
			}
		}
		reportRuns(b)
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := post(); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportRuns(b)
	})
}
